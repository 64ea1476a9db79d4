// Package bench is quicmesh's load generator ("quicmesh-dev bench").
//
// It drives HTTP/1.1, h2c, gRPC (unary and bidi-stream round trips) and raw
// TCP (echo round trips and bulk transfer) against a target, usually one of
// the servers in internal/echo, either behind quicmesh sidecars or directly.
//
// Two load models are supported. Open loop (Rate > 0) sends at a constant
// rate with uniform pacing: request i is scheduled at start + i/Rate, and a
// pool of Concurrency workers takes the scheduled slots in order. A slot
// that finds every worker busy waits, and its latency is measured from its
// intended send time, so the wait is included: this corrects coordinated
// omission the way wrk2 does. Closed loop (Rate == 0) runs Concurrency
// workers back to back for maximum throughput; latency is measured from
// each request's actual send.
//
// Connections are established before the clock starts, so dialing is not
// timed as part of the first requests (a connection lost during the run is
// redialed by the request that needs it, and that time is counted).
//
// Latencies go into per-worker log-linear histograms (see [Histogram])
// merged at the end. Results are reported as a [Result], whose JSON schema
// is documented in SCHEMA.md.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol modes accepted in Config.Proto.
const (
	ProtoHTTP1      = "http1"
	ProtoH2C        = "h2c"
	ProtoGRPC       = "grpc"
	ProtoGRPCStream = "grpc-stream"
	ProtoTCP        = "tcp"
	ProtoTCPBulk    = "tcp-bulk"
)

// Protocols lists the accepted protocol modes.
var Protocols = []string{ProtoHTTP1, ProtoH2C, ProtoGRPC, ProtoGRPCStream, ProtoTCP, ProtoTCPBulk}

// Defaults applied by Run to zero Config fields.
const (
	DefaultDuration    = 10 * time.Second
	DefaultConcurrency = 16
	DefaultTimeout     = 10 * time.Second
	DefaultTCPPayload  = 64       // bytes per tcp round trip when Payload is 0
	DefaultBulkChunk   = 64 << 10 // bytes per tcp-bulk write when Payload is 0
	MaxPayload         = 64 << 20
)

// Config describes one run.
type Config struct {
	// Proto is one of [Protocols].
	Proto string
	// Target is a URL (http://host:port/path) for http1 and h2c, and
	// host:port for grpc, grpc-stream, tcp and tcp-bulk.
	Target string
	// Rate is the open-loop request rate per second; 0 selects the closed
	// loop. tcp-bulk supports only the closed loop.
	Rate float64
	// Duration of the measured part of the run (0 = DefaultDuration).
	Duration time.Duration
	// Warmup runs before Duration; its requests are not counted.
	Warmup time.Duration
	// Concurrency is the number of workers, i.e. the most requests in
	// flight (0 = DefaultConcurrency).
	Concurrency int
	// Connections is the number of underlying connections: HTTP/1.1
	// keep-alive connections shared by the workers, or HTTP/2 / gRPC
	// connections each multiplexing many streams. 0 means Concurrency for
	// http1 and 1 for h2c, grpc and grpc-stream. It is capped at
	// Concurrency. For tcp and tcp-bulk every worker has its own
	// connection and Connections is always Concurrency.
	Connections int
	// Payload is the request body size in bytes. For http1 and h2c, 0
	// sends GET and more sends POST with that body (echoed back); for gRPC
	// it is the message size; for tcp 0 means DefaultTCPPayload and for
	// tcp-bulk DefaultBulkChunk.
	Payload int
	// Timeout bounds each request (0 = DefaultTimeout).
	Timeout time.Duration
	// Procs are processes whose CPU time and memory are sampled during the
	// measured part of the run.
	Procs []Proc
	// ProcInterval is the sampling period for Procs (0 = 250ms).
	ProcInterval time.Duration
	// Clock is the time source (nil = SystemClock).
	Clock Clock
	// Progress, if set, receives a live progress line once a second
	// (carriage-return updated; meant for a terminal).
	Progress io.Writer
}

// normalize applies defaults and validates c.
func (c *Config) normalize() error {
	known := false
	for _, p := range Protocols {
		known = known || c.Proto == p
	}
	if !known {
		return fmt.Errorf("--proto: unknown protocol %q (want one of http1, h2c, grpc, grpc-stream, tcp, tcp-bulk)", c.Proto)
	}
	if c.Target == "" {
		return errors.New("--target is required")
	}
	if err := checkTarget(c.Proto, c.Target); err != nil {
		return err
	}
	switch {
	case c.Rate < 0 || c.Rate != c.Rate || c.Rate > 1e9:
		return fmt.Errorf("--rate %v: out of range (0 = closed loop, up to 1e9)", c.Rate)
	case c.Rate > 0 && c.Proto == ProtoTCPBulk:
		return errors.New("--rate: tcp-bulk measures maximum throughput: rate must be 0")
	case c.Duration < 0:
		return errors.New("--duration must not be negative")
	case c.Warmup < 0:
		return errors.New("--warmup must not be negative")
	case c.Concurrency < 0:
		return errors.New("--concurrency must not be negative")
	case c.Connections < 0:
		return errors.New("--connections must not be negative")
	case c.Payload < 0 || c.Payload > MaxPayload:
		return fmt.Errorf("--payload %d: out of range (0..%d)", c.Payload, MaxPayload)
	case c.Timeout < 0:
		return errors.New("--timeout must not be negative")
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Clock == nil {
		c.Clock = SystemClock
	}
	switch c.Proto {
	case ProtoTCP, ProtoTCPBulk:
		c.Connections = c.Concurrency
	case ProtoHTTP1:
		if c.Connections == 0 {
			c.Connections = c.Concurrency
		}
	default:
		if c.Connections == 0 {
			c.Connections = 1
		}
	}
	c.Connections = min(c.Connections, c.Concurrency)
	if c.Payload == 0 {
		switch c.Proto {
		case ProtoTCP:
			c.Payload = DefaultTCPPayload
		case ProtoTCPBulk:
			c.Payload = DefaultBulkChunk
		}
	}
	return nil
}

// requester performs requests for one worker; it is used by one goroutine.
type requester interface {
	// do performs one request and returns the response payload bytes.
	do(ctx context.Context) (int64, error)
	close()
}

// selfTimedRequester is a requester that enforces Config.Timeout itself,
// with socket deadlines, and watches the run's request context on its
// own: its do is passed that context, the same for every request, so the
// engine's hot path creates no context (and no timer) per request.
type selfTimedRequester interface {
	requester
	selfTimed()
}

// eventLooper is implemented by targets that can run the request loops
// (closed or open) of many workers on a few event loops instead of one
// goroutine each (see proto_http1_loop_linux.go for why).
type eventLooper interface {
	// looping reports whether this run uses the event loops; it was
	// decided from the Config when the target was created, so that
	// preconnect sets up the loops' connections.
	looping() bool
	// runLoops runs the request loops of ws on goroutines of wg until
	// the run ends. A worker that leaves its event loop (an unusual
	// response, an error) continues in e.runWorker on a goroutine of wg.
	runLoops(e *engine, ws []worker, wg *sync.WaitGroup)
}

// target creates the requesters of a run and owns shared connections.
type target interface {
	requester(worker int) requester
	close()
}

// preconnecter is implemented by targets and requesters that can set up
// their connections before the run's clock starts, so that connection
// establishment is not timed as part of the first requests. Failures are
// ignored: the requests report them.
type preconnecter interface {
	preconnect(ctx context.Context)
}

// preconnect sets up t's and the requesters' connections, in parallel,
// giving up after timeout.
func preconnect(ctx context.Context, timeout time.Duration, t target, rqs []requester) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if p, ok := t.(preconnecter); ok {
		p.preconnect(ctx)
	}
	var wg sync.WaitGroup
	for _, rq := range rqs {
		if p, ok := rq.(preconnecter); ok {
			wg.Go(func() { p.preconnect(ctx) })
		}
	}
	wg.Wait()
}

// workerStats are one worker's statistics. Only the worker writes them
// (the atomics are read by the progress line), so the hot path takes no
// lock.
type workerStats struct {
	live    atomic.Int64 // completions, warmup included (progress line)
	liveErr atomic.Int64
	hist    Histogram
	lag     Histogram // open loop: actual minus intended send time
	errs    map[string]int64
	reqs    int64 // requests completed in the measured window
	issued  int64 // open loop: slots of the window that were sent
	bytes   int64
}

func (s *workerStats) addErr(kind string) {
	if s.errs == nil {
		s.errs = make(map[string]int64)
	}
	s.errs[kind]++
}

// engine runs the request loops of a run.
type engine struct {
	cfg     Config
	clock   Clock
	start   time.Time
	warmEnd time.Time
	end     time.Time
	sched   Schedule // open loop only
	next    atomic.Int64
	ctx     context.Context // ends when the caller's ctx ends
	reqCtx  context.Context // parent of request contexts
	stats   []*workerStats
}

// testHookRunStart, if set (by tests, before Run), is told the start of
// the run's clock: the open loop's slot i is intended for start + i/Rate.
var testHookRunStart func(start time.Time)

// Run executes one benchmark and returns its result. Failing requests are
// counted in the result, not returned as errors; Run fails only for an
// invalid Config or when ctx is done before anything was measured. If ctx
// ends during the measured window the result covers the time until then.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	var (
		t   target
		err error
	)
	switch cfg.Proto {
	case ProtoHTTP1:
		t, err = newHTTP1Target(cfg)
	case ProtoH2C:
		t, err = newHTTPTarget(cfg)
	case ProtoGRPC, ProtoGRPCStream:
		t, err = newGRPCTarget(cfg)
	case ProtoTCP:
		t, err = newTCPTarget(cfg)
	case ProtoTCPBulk:
		return runBulk(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	return runTarget(ctx, cfg, t)
}

// runTarget runs the request loops against t and closes it. cfg must be
// normalized.
func runTarget(ctx context.Context, cfg Config, t target) (*Result, error) {
	defer t.close()
	rqs := make([]requester, cfg.Concurrency)
	for i := range rqs {
		rqs[i] = t.requester(i)
	}
	preconnect(ctx, cfg.Timeout, t, rqs)

	e := &engine{cfg: cfg, clock: cfg.Clock, ctx: ctx}
	e.start = e.clock.Now()
	if testHookRunStart != nil {
		testHookRunStart(e.start)
	}
	e.warmEnd = e.start.Add(cfg.Warmup)
	e.end = e.warmEnd.Add(cfg.Duration)
	e.sched = Schedule{Start: e.start, Rate: cfg.Rate}
	e.reqCtx = ctx
	if cfg.Rate == 0 && cfg.Clock == SystemClock {
		// Closed loop: requests in flight at the end are cut off. The
		// deadline is on the real clock, so only a run on the real clock
		// gets one; a simulated clock's run ends by its own time (the
		// check in closedLoop). A real-time deadline there cut a starved
		// simulation short: 71,437 of 90,000 requests at load 19.
		var cancel context.CancelFunc
		e.reqCtx, cancel = context.WithTimeout(ctx, e.end.Sub(e.clock.Now()))
		defer cancel()
	}

	e.stats = newWorkerStats(cfg.Concurrency)
	ax := startAux(ctx, cfg, e.stats)
	ws := make([]worker, len(rqs))
	for i, rq := range rqs {
		ws[i] = worker{rq: rq, st: e.stats[i]}
		_, ws[i].selfTimed = rq.(selfTimedRequester)
	}
	var wg sync.WaitGroup
	if l, ok := t.(eventLooper); ok && l.looping() {
		l.runLoops(e, ws, &wg)
		wg.Wait()
		for _, rq := range rqs {
			rq.close()
		}
	} else {
		for _, w := range ws {
			wg.Go(func() {
				defer w.rq.close()
				e.runWorker(w)
			})
		}
		wg.Wait()
	}
	finished := e.clock.Now()
	ax.stop()

	r := e.result(finished)
	ax.report(r)
	if r.DurationS == 0 && ctx.Err() != nil {
		return r, fmt.Errorf("interrupted before the measured window: %w", ctx.Err())
	}
	return r, nil
}

func newWorkerStats(n int) []*workerStats {
	stats := make([]*workerStats, n)
	for i := range stats {
		stats[i] = &workerStats{}
	}
	return stats
}

// aux is what runs beside the request loops: the progress line, the
// sampler of --pid processes and the generator's own CPU time.
type aux struct {
	sampler *ProcSampler // nil without Procs
	self    selfCPU
	stopC   chan struct{}
	wg      sync.WaitGroup
}

// startAux starts the progress line, the process sampler and the
// generator's CPU accounting; stop ends them at the end of the run.
func startAux(ctx context.Context, cfg Config, stats []*workerStats) *aux {
	a := &aux{stopC: make(chan struct{})}
	if len(cfg.Procs) > 0 {
		a.sampler = NewProcSampler(cfg.Procs)
		if cfg.ProcInterval > 0 {
			a.sampler.Interval = cfg.ProcInterval
		}
	}
	// The sampler and the CPU accounting cover the measured window: they
	// start when the warmup ends (on the real clock).
	windowStart := func() {
		a.self.mark(false)
		if a.sampler != nil {
			a.sampler.Start()
		}
	}
	if cfg.Warmup <= 0 {
		windowStart()
	} else {
		a.wg.Go(func() {
			tm := time.NewTimer(cfg.Warmup)
			defer tm.Stop()
			select {
			case <-tm.C:
				windowStart()
			case <-a.stopC:
			case <-ctx.Done():
			}
		})
	}
	if cfg.Progress != nil {
		a.wg.Go(func() { progressLoop(cfg, stats, a.stopC) })
	}
	return a
}

// stop ends the window of the CPU accounting and stops the progress line.
func (a *aux) stop() {
	a.self.mark(true)
	close(a.stopC)
	a.wg.Wait()
}

// report adds the sampled processes and the generator's CPU use to r,
// whose window and requests are final.
func (a *aux) report(r *Result) {
	if a.sampler != nil {
		r.Processes = a.sampler.Stop(r.Requests)
	}
	r.Generator = a.self.stats(time.Duration(r.DurationS*float64(time.Second)), r.Requests)
}

// worker is one request loop's requester and statistics.
type worker struct {
	rq        requester
	st        *workerStats
	selfTimed bool // rq is a selfTimedRequester
}

// runWorker runs w's request loop of the run's load model on the calling
// goroutine until the run ends for it.
func (e *engine) runWorker(w worker) {
	if e.cfg.Rate > 0 {
		e.openLoop(w)
	} else {
		e.closedLoop(w)
	}
}

// openLoop takes scheduled slots until the schedule or the run ends.
func (e *engine) openLoop(w worker) {
	for {
		intended, ok := e.claim(e.clock.Now())
		if !ok {
			return
		}
		if !e.sendAt(w, intended) {
			return
		}
	}
}

// claim takes the next slot of the schedule for a free worker at now and
// returns its intended send time; ok is false when the run is over for
// the worker: the slot is past the end of the run, or the run is over
// with slots still queued (they stay unsent, reported as Result.Unsent).
// Every worker claims a slot as soon as it is free, so the free workers
// hold the next slots in order, and a slot that finds every worker busy
// is claimed late. The event loops claim through it too.
func (e *engine) claim(now time.Time) (intended time.Time, ok bool) {
	intended = e.sched.At(e.next.Add(1) - 1)
	return intended, intended.Before(e.end) && now.Before(e.end)
}

// sendAt sends w's claimed slot at its intended time and records it. It
// reports false if the run was interrupted.
func (e *engine) sendAt(w worker, intended time.Time) bool {
	now := e.clock.Now()
	if now.Before(intended) {
		if e.clock.SleepUntil(e.ctx, intended) != nil {
			return false
		}
		now = e.clock.Now()
	}
	inWindow := e.issue(w.st, intended, now)
	e.one(w, intended, inWindow)
	return e.ctx.Err() == nil
}

// issue accounts for the send, at now, of the slot intended for intended
// and reports whether it belongs to the measured window. Latency counts
// from the intended send time whatever delayed the send (busy workers, or
// the generator's own timer lateness), as wrk2 does: that is the
// coordinated omission correction. How late the generator itself was is
// reported apart, as send_lag_us, so a reader can tell its share.
func (e *engine) issue(st *workerStats, intended, now time.Time) (inWindow bool) {
	inWindow = !intended.Before(e.warmEnd)
	if inWindow {
		st.issued++
		st.lag.Record(now.Sub(intended))
	}
	return inWindow
}

// closedLoop sends back to back until the run ends.
func (e *engine) closedLoop(w worker) {
	for {
		from := e.clock.Now()
		if !from.Before(e.end) || e.reqCtx.Err() != nil {
			return
		}
		e.one(w, from, !from.Before(e.warmEnd))
	}
}

// one performs a request and records it.
func (e *engine) one(w worker, from time.Time, inWindow bool) {
	var (
		n    int64
		err  error
		kind string
		done time.Time
	)
	if w.selfTimed {
		n, err = w.rq.do(e.reqCtx)
		done = e.clock.Now()
		if err != nil {
			kind = classify(e.reqCtx, err)
		}
	} else {
		rctx, cancel := context.WithTimeout(e.reqCtx, e.cfg.Timeout)
		n, err = w.rq.do(rctx)
		done = e.clock.Now()
		if err != nil {
			kind = classify(rctx, err)
		}
		cancel()
	}
	e.record(w.st, from, done, inWindow, n, err, kind)
}

// record counts one finished request of a worker: started at from,
// finished at done, with n payload bytes, or failed with err of the given
// kind. The event loops (proto_http1_loop_linux.go) record through it too.
func (e *engine) record(st *workerStats, from, done time.Time, inWindow bool, n int64, err error, kind string) {
	st.live.Add(1)
	if err != nil {
		st.liveErr.Add(1)
	}
	if !inWindow {
		return
	}
	if err != nil && e.reqCtx.Err() != nil {
		return // cut off by the end of the run or the caller: not a failure
	}
	if e.cfg.Rate == 0 && done.After(e.end) {
		return // closed loop counts what completed inside the window
	}
	st.reqs++
	if err != nil {
		st.addErr(kind)
		return
	}
	st.bytes += n
	st.hist.Record(done.Sub(from))
}

// result merges the worker statistics.
func (e *engine) result(finished time.Time) *Result {
	r := newResult(e.cfg)
	end := e.end
	if e.ctx.Err() != nil && finished.Before(end) {
		end = finished // interrupted: the window ends now
	}
	d := end.Sub(e.warmEnd)
	if d < 0 {
		d = 0
	}
	var h, lag Histogram
	var issued int64
	for _, st := range e.stats {
		h.Merge(&st.hist)
		lag.Merge(&st.lag)
		r.Requests += st.reqs
		issued += st.issued
		r.addBytes(st.bytes)
		for k, v := range st.errs {
			r.Errors[k] += v
			r.ErrorTotal += v
		}
	}
	if e.cfg.Rate > 0 && d > 0 {
		slots := e.sched.Index(end.Sub(e.start)) - e.sched.Index(e.cfg.Warmup)
		r.Unsent = max(slots-issued, 0)
	}
	r.finish(d, &h)
	if e.cfg.Rate > 0 {
		r.SendLagUS = summarize(&lag)
	}
	return r
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
