package bench

import (
	"bufio"
	"context"
	"io"
	"math"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// h1Paths are the HTTP/1.1 request paths of this system: the event loops
// (where there are any) and a goroutine per worker. The open-loop tests
// hold both to the same rules.
var h1Paths = func() []bool {
	if h1EventLoops {
		return []bool{true, false}
	}
	return []bool{false}
}()

func h1PathName(loop bool) string {
	if loop {
		return "loop"
	}
	return "goroutines"
}

// pacedServer is an HTTP/1.1 server for the open-loop tests: it records
// when each request head arrived, calls hold (if set) with the request's
// number (from 0, over all connections, in arrival order), which may
// block, and then answers with a short keep-alive response.
type pacedServer struct {
	url  string
	hold func(n int)

	mu       sync.Mutex
	arrivals []time.Time
	answered int
	arrived  chan int // the number of each arrival, if not nil (buffered)
}

func newPacedServer(t *testing.T, hold func(n int), arrived chan int) *pacedServer {
	t.Helper()
	s := &pacedServer{hold: hold, arrived: arrived}
	s.url = connServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			s.mu.Lock()
			n := len(s.arrivals)
			s.arrivals = append(s.arrivals, time.Now())
			s.mu.Unlock()
			if s.arrived != nil {
				s.arrived <- n
			}
			if s.hold != nil {
				s.hold(n)
			}
			s.mu.Lock()
			s.answered++
			s.mu.Unlock()
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"); err != nil {
				return
			}
		}
	})
	return s
}

func (s *pacedServer) answeredCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered
}

// openRun runs cfg on the given path and returns the result and the
// start of the run's clock (slot i is intended for start + i/Rate). hook,
// if not nil, is told the start before any request is sent.
func openRun(t *testing.T, loop bool, cfg Config, hook func(time.Time)) (*Result, time.Time) {
	t.Helper()
	defer func(old bool) { h1EventLoops = old }(h1EventLoops)
	h1EventLoops = loop
	var start time.Time
	testHookRunStart = func(s time.Time) {
		start = s
		if hook != nil {
			hook(s)
		}
	}
	defer func() { testHookRunStart = nil }()
	cfg.Proto = ProtoHTTP1
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, start
}

// checkAccounting checks the rules every open-loop run keeps whatever
// the load on the machine: every slot of the window is either a counted
// request or unsent, every request the server answered was counted (none
// lost at the end of the run), and none failed.
func checkAccounting(t *testing.T, r *Result, cfg Config, srv *pacedServer) {
	t.Helper()
	slots := Schedule{Rate: cfg.Rate}.Index(cfg.Duration)
	if r.Requests+r.Unsent != slots {
		t.Errorf("%d requests + %d unsent, want the %d slots of the window", r.Requests, r.Unsent, slots)
	}
	if got := srv.answeredCount(); int64(got) != r.Requests {
		t.Errorf("the server answered %d requests, the result counts %d", got, r.Requests)
	}
	if r.ErrorTotal != 0 {
		t.Errorf("errors %v, want none", r.Errors)
	}
	if r.SendLagUS == nil {
		t.Fatal("no send lag in an open-loop result")
	}
}

// A paced run keeps to its schedule: no request leaves before its
// intended time, and the run reaches its rate except for slots that the
// measured latencies account for. The bound: if U slots were never sent,
// then at the end of the run every one of the C workers was still busy
// with a request claimed before them (a free worker claims the next slot
// at once), so the oldest of those had waited at least (U+C-1)/Rate:
// U <= latency.max*Rate - C + 1. A generator that dropped slots, or
// stopped claiming before the end, breaks it.
func TestHTTP1OpenLoopPaced(t *testing.T) {
	base := testkit.TakeBaseline()
	t.Cleanup(func() { base.Check(t) })
	for _, loop := range h1Paths {
		t.Run(h1PathName(loop), func(t *testing.T) {
			var (
				srv   *pacedServer
				cfg   Config
				r     *Result
				start time.Time
			)
			for _, d := range []time.Duration{250 * time.Millisecond, time.Second, 4 * time.Second} {
				srv = newPacedServer(t, nil, nil)
				cfg = Config{Target: srv.url, Rate: 2000, Concurrency: 8, Duration: d, Timeout: time.Minute}
				r, start = openRun(t, loop, cfg, nil)
				if r.Requests > 0 {
					break
				}
				// The bound below holds once the workers ran inside the
				// window at all.
				t.Logf("nothing sent in %v (process starved?); retrying for longer", d)
			}
			checkAccounting(t, r, cfg, srv)
			allowed := int64(math.Ceil(float64(r.LatencyUS.Max+1)*cfg.Rate/1e6)) - int64(cfg.Concurrency) + 1
			if r.Unsent > max(allowed, 0) {
				t.Errorf("%d slots unsent (%.0f req/s of %v), more than the %d the latency max %d µs accounts for",
					r.Unsent, r.RPS, cfg.Rate, max(allowed, 0), r.LatencyUS.Max)
			}
			srv.mu.Lock()
			arrivals := slices.Clone(srv.arrivals)
			srv.mu.Unlock()
			slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
			// The k-th arrival is the request of a slot k or later.
			sched := Schedule{Start: start, Rate: cfg.Rate}
			for k, a := range arrivals {
				if a.Before(sched.At(int64(k))) {
					t.Fatalf("request %d arrived %v before slot %d's intended time", k, sched.At(int64(k)).Sub(a), k)
				}
			}
			t.Logf("%d requests, %d unsent, latency p50 %d µs max %d µs, send lag p50 %d µs p99 %d µs",
				r.Requests, r.Unsent, r.LatencyUS.P50, r.LatencyUS.Max, r.SendLagUS.P50, r.SendLagUS.P99)
		})
	}
}

// Slots that come due while every worker is busy are sent late, and that
// lateness is both send lag and latency: the server holds the first
// requests of both workers until well after the next slots were due.
func TestHTTP1OpenLoopLateSends(t *testing.T) {
	base := testkit.TakeBaseline()
	t.Cleanup(func() { base.Check(t) })
	for _, loop := range h1Paths {
		t.Run(h1PathName(loop), func(t *testing.T) {
			const workers = 2
			cfg := Config{Rate: 1000, Concurrency: workers, Duration: 300 * time.Millisecond, Timeout: time.Minute}
			release := make(chan struct{})
			arrived := make(chan int, 1024)
			srv := newPacedServer(t, func(n int) {
				if n < workers {
					<-release
				}
			}, arrived)
			cfg.Target = srv.url
			var (
				r      *Result
				done   = make(chan struct{})
				startC = make(chan time.Time, 1)
			)
			go func() {
				defer close(done)
				r, _ = openRun(t, loop, cfg, func(s time.Time) { startC <- s })
			}()
			sched := Schedule{Start: <-startC, Rate: cfg.Rate}
			// Both workers are busy once both first requests arrived.
			for range workers {
				<-arrived
			}
			// Hold them until slot 20 is due: slots 2..20 find no free
			// worker.
			slot2 := sched.At(2)
			time.Sleep(time.Until(sched.At(20)))
			released := time.Now()
			close(release)
			<-done
			checkAccounting(t, r, cfg, srv)
			end := sched.Start.Add(cfg.Duration)
			if !released.Before(end) {
				// Starved until after the end of the run: the workers
				// were busy through the whole window, so only the two
				// held requests were sent.
				if r.Requests != workers {
					t.Errorf("released after the end: %d requests, want the %d held ones", r.Requests, workers)
				}
				return
			}
			// Slot 2 left after a worker was free again, after released.
			minLag := uint64(released.Sub(slot2) / time.Microsecond)
			if r.SendLagUS.Max < minLag {
				t.Errorf("send lag max %d µs, want at least %d µs (slot 2 waited for a busy worker)", r.SendLagUS.Max, minLag)
			}
			if r.LatencyUS.Max < r.SendLagUS.Max {
				t.Errorf("latency max %d µs below send lag max %d µs: a late send must count in the latency", r.LatencyUS.Max, r.SendLagUS.Max)
			}
			t.Logf("%d requests, %d unsent, send lag p50 %d µs max %d µs, latency max %d µs",
				r.Requests, r.Unsent, r.SendLagUS.P50, r.SendLagUS.Max, r.LatencyUS.Max)
		})
	}
}

// The requests in flight when an open-loop run ends are waited for and
// counted, as they were sent in the window: the server holds every request
// after the first until after the end of the run.
func TestHTTP1OpenLoopEndOfRun(t *testing.T) {
	base := testkit.TakeBaseline()
	t.Cleanup(func() { base.Check(t) })
	for _, loop := range h1Paths {
		t.Run(h1PathName(loop), func(t *testing.T) {
			cfg := Config{Rate: 200, Concurrency: 4, Duration: 200 * time.Millisecond, Timeout: time.Minute}
			var (
				startMu sync.Mutex
				end     time.Time
				held    int
			)
			srv := newPacedServer(t, func(n int) {
				if n == 0 {
					return
				}
				startMu.Lock()
				held++
				until := end.Add(10 * time.Millisecond)
				startMu.Unlock()
				time.Sleep(time.Until(until))
			}, nil)
			cfg.Target = srv.url
			r, _ := openRun(t, loop, cfg, func(s time.Time) {
				startMu.Lock()
				end = s.Add(cfg.Duration)
				startMu.Unlock()
			})
			checkAccounting(t, r, cfg, srv)
			startMu.Lock()
			h := held
			startMu.Unlock()
			if h > 0 && r.LatencyUS.Max < uint64(10*time.Millisecond/time.Microsecond) {
				t.Errorf("%d requests held past the end, but latency max is %d µs", h, r.LatencyUS.Max)
			}
			t.Logf("%d requests (%d held past the end), %d unsent", r.Requests, h, r.Unsent)
		})
	}
}

// BenchmarkHTTP1OpenLoop is the open loop of the generator at 5,000 req/s
// against a canned-response server on loopback, on the event loops and on
// the goroutine path: one op is a 300 ms run of 16 workers. It reports the
// generator's CPU per request (the whole process, server included), the
// heap allocations per request and the send lag.
func BenchmarkHTTP1OpenLoop(b *testing.B) {
	target := cannedServer(b, benchResp)
	for _, loop := range h1Paths {
		b.Run(h1PathName(loop), func(b *testing.B) {
			defer func(old bool) { h1EventLoops = old }(h1EventLoops)
			h1EventLoops = loop
			var reqs int64
			var cpu float64
			var lag Histogram
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for b.Loop() {
				r, err := Run(context.Background(), Config{Proto: ProtoHTTP1, Target: target, Rate: 5000, Concurrency: 16, Duration: 300 * time.Millisecond})
				if err != nil {
					b.Fatal(err)
				}
				if r.ErrorTotal != 0 {
					b.Fatalf("errors %v", r.Errors)
				}
				reqs += r.Requests
				if r.Generator != nil {
					cpu += r.Generator.CPUSeconds
				}
				lag.RecordMicros(r.SendLagUS.P99)
			}
			runtime.ReadMemStats(&after)
			if reqs == 0 {
				b.Fatal("no requests")
			}
			b.ReportMetric(cpu*1e6/float64(reqs), "gen-µs/req")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(reqs), "allocs/req")
			b.ReportMetric(float64(lag.Quantile(0.5)), "lag-p99-µs")
		})
	}
}
