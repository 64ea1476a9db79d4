//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Event loops for the HTTP/1.1 closed and open loops.
//
// Why: with a goroutine per worker, each request costs the generator a
// write, a read that finds nothing yet (EAGAIN), a park of the goroutine,
// an epoll_wait in the scheduler, a wake-up and the read again, plus the
// scheduler's futex and sysmon wake-ups; a perf profile of the generator
// against the direct app (docs/benchmarks.md, "Load generator") had a
// quarter of its samples in context switches of the runtime (sysmon's
// nanosleep, the scheduler's epoll_wait and futex), more than in the HTTP
// client. Like wrk, a loop here keeps many connections in one epoll set
// and does one write and one read per request, the epoll_wait shared by
// all the responses that arrive together, and no goroutine switch.
//
// The loop runs the steady state only: keep-alive responses delimited by
// Content-Length (or 204/304) on connections it dialed before the clock
// started. Anything else (a chunked or close-delimited body, a response
// head longer than its buffer, a connection the server closes, an error)
// hands the worker over to the goroutine path (http1Requester.do) for the
// rest of the run, with what the loop had read of the response, so both
// paths give the same results; only the common case is fast.
//
// The sockets are raw (not net.Conn) so that they are not also in the Go
// runtime's epoll set: there, every response would wake the scheduler's
// poller too. A handed-over socket becomes a net.Conn (net.FileConn).
//
// The open loop (--rate) runs the same way. Each worker of a loop claims
// the next slot of the run's schedule as soon as it is free (engine.claim,
// as on the goroutine path, so both paths share one schedule); the loop
// keeps its claimed slots in order and a timerfd armed, at an absolute
// time, for the earliest. A goroutine per worker sleeping until its slot
// cost the generator 124-199 µs of CPU per request at 1,000 req/s (a Go
// timer, a nanosleep and the scheduler's wake-ups for every request), and
// sent 70 µs late at the median. A timerfd is used rather than
// epoll_wait's timeout because that timeout has millisecond resolution
// (epoll_pwait2's has nanoseconds, but the kernel adds the thread's timer
// slack, 50 µs by default), while a timerfd's timer has no slack.

// h1EventLoops enables the event loops; tests turn it off to compare the
// two paths.
var h1EventLoops = true

// h1LoopConn is one worker's connection on an event loop.
type h1LoopConn struct {
	w        worker
	c        *h1Conn
	idx      int32 // position in the loop's conns, the epoll event's data
	buf      []byte
	r, end   int // unread bytes are buf[r:end]
	wrote    int // bytes of the request written
	writing  bool
	got      bool // bytes of this request's response arrived
	reused   bool // the connection carried a request before this one
	from     time.Time
	deadline time.Time
	inWindow bool
	head     respHead
	bodyLeft int64 // -1: the head is not parsed yet
	n        int64
	gone     bool // handed over, failed or finished: not the loop's any more

	// Open loop: waiting is set while the worker holds a claimed slot,
	// intended for intended, and has no request in flight.
	waiting  bool
	intended time.Time
}

type h1Loop struct {
	t      *http1Target
	e      *engine
	wg     *sync.WaitGroup
	ep     int // epoll fd
	wake   int // eventfd: the run's request context ended
	conns  []*h1LoopConn
	active int
	hsrc   bytes.Reader // a complete response head, parsed through hb
	hb     *bufio.Reader

	// Open loop only (open is e.cfg.Rate > 0).
	open   bool
	timer  int           // timerfd (CLOCK_MONOTONIC), -1 in the closed loop
	queue  h1SlotQueue   // workers waiting for their claimed slot, in slot order
	armed  time.Time     // when timer is set to expire; zero: not set
	clock0 time.Time     // clock0 was at or before CLOCK_MONOTONIC mono0
	mono0  time.Duration // (see monotonic)

	mu     sync.Mutex // orders the wake-up write against closing wake
	closed bool
}

// Event data of the epoll set that are not connections.
const (
	h1EvWake  = -1
	h1EvTimer = -2
)

// runLoops splits ws over h1LoopCount event loops. Workers whose
// loop cannot be set up run on goroutines.
func (t *http1Target) runLoops(e *engine, ws []worker, wg *sync.WaitGroup) {
	t.watch(e.reqCtx) // abort covers the connections handed over
	n := min(h1LoopCount(runtime.GOMAXPROCS(0)), len(ws))
	parts := make([][]worker, n)
	for i, w := range ws {
		parts[i%n] = append(parts[i%n], w)
	}
	for i, part := range parts {
		l, err := newH1Loop(t, e, wg)
		if err != nil {
			// Cannot happen short of running out of file descriptors;
			// the workers still run, on the goroutine path.
			for j := range part {
				c := t.conns[i+j*n]
				l := &h1Loop{t: t, e: e, wg: wg, ep: -1, wake: -1, timer: -1}
				l.handover(&h1LoopConn{w: part[j], c: c}, nil)
			}
			continue
		}
		for j, w := range part {
			l.add(w, t.conns[i+j*n])
		}
		wg.Go(l.run)
	}
}

// h1LoopCount is the number of event loops for procs Ps: half of them.
// A loop blocks in epoll_wait holding its P in a system call; when no P
// is idle, the runtime's sysmon takes such a P away after 20 µs and the
// loop must get one back when epoll_wait returns: with a loop per P, a
// perf profile of the generator had 11 % of its samples in sysmon's
// wake-ups alone. With a P left idle for each loop, a loop keeps its P.
func h1LoopCount(procs int) int {
	return max(1, procs/2)
}

func newH1Loop(t *http1Target, e *engine, wg *sync.WaitGroup) (l *h1Loop, err error) {
	l = &h1Loop{t: t, e: e, wg: wg, ep: -1, wake: -1, timer: -1, open: e.cfg.Rate > 0}
	defer func() {
		if err != nil {
			l.closeFDs()
		}
	}()
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, l.wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: h1EvWake}); err != nil {
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	if l.open {
		if l.timer, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK); err != nil {
			return nil, fmt.Errorf("timerfd_create: %w", err)
		}
		// Edge-triggered: an expiry is reported once, and the timer is
		// never read; setting it again clears its expiry count.
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, l.timer, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: h1EvTimer}); err != nil {
			return nil, fmt.Errorf("epoll_ctl timerfd: %w", err)
		}
		// Go's monotonic clock is CLOCK_MONOTONIC; a time.Time's reading
		// of it is not exported, so the loop maps times through one pair
		// of readings. Reading the kernel clock second makes the mapping
		// late by the few nanoseconds between them, never early.
		l.clock0 = time.Now()
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			return nil, fmt.Errorf("clock_gettime: %w", err)
		}
		l.mono0 = time.Duration(ts.Nano())
	}
	l.hb = bufio.NewReaderSize(nil, h1ReadBuffer)
	return l, nil
}

// closeFDs closes the loop's epoll set, eventfd and timerfd.
func (l *h1Loop) closeFDs() {
	for _, fd := range []*int{&l.timer, &l.wake, &l.ep} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// add gives the loop worker w and its connection slot c.
func (l *h1Loop) add(w worker, c *h1Conn) {
	lc := &h1LoopConn{w: w, c: c, idx: int32(len(l.conns))}
	l.conns = append(l.conns, lc)
	if c.fd < 0 {
		lc.gone = true // not connected: the goroutine path dials
		return
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: lc.idx}); err != nil {
		unix.Close(c.fd)
		c.fd = -1
		lc.gone = true
		return
	}
	lc.buf = make([]byte, h1ReadBuffer)
	l.active++
}

// h1SlotQueue is a loop's workers waiting for their claimed slots, in
// slot order: a loop claims slots one after the other, so the order of
// its claims is the order of their send times. A ring buffer: a worker is
// in it at most once.
type h1SlotQueue struct {
	q          []*h1LoopConn
	head, size int
}

func (q *h1SlotQueue) push(lc *h1LoopConn) {
	if q.size == len(q.q) {
		// Grow (only up to the loop's number of workers).
		nq := make([]*h1LoopConn, max(2*len(q.q), 8))
		for i := range q.size {
			nq[i] = q.q[(q.head+i)%len(q.q)]
		}
		q.q, q.head = nq, 0
	}
	q.q[(q.head+q.size)%len(q.q)] = lc
	q.size++
}

func (q *h1SlotQueue) peek() *h1LoopConn {
	if q.size == 0 {
		return nil
	}
	return q.q[q.head]
}

func (q *h1SlotQueue) pop() *h1LoopConn {
	lc := q.q[q.head]
	q.q[q.head] = nil
	q.head = (q.head + 1) % len(q.q)
	q.size--
	return lc
}

func (l *h1Loop) run() {
	stop := context.AfterFunc(l.e.reqCtx, l.signal)
	defer func() {
		stop()
		l.mu.Lock()
		l.closed = true
		unix.Close(l.wake)
		l.wake = -1
		l.mu.Unlock()
		l.closeFDs()
		// Requests still in flight are cut off by the end of the run,
		// as on the goroutine path: not counted.
		for _, lc := range l.conns {
			if !lc.gone && lc.c.fd >= 0 {
				unix.Close(lc.c.fd)
				lc.c.fd = -1
			}
		}
	}()
	now := time.Now()
	for _, lc := range l.conns {
		if lc.gone {
			if lc.c.fd < 0 {
				l.handover(lc, nil)
			}
			continue
		}
		l.start(lc, now)
	}
	events := make([]unix.EpollEvent, len(l.conns)+2)
	yielded := now
	for l.active > 0 {
		if l.open {
			l.dispatch(now)
		}
		if now.Sub(yielded) >= h1YieldEvery {
			// Right after the sends, with the most time to the next.
			runtime.Gosched()
			yielded = now
		}
		n, err := unix.EpollWait(l.ep, events, l.waitMillis(now))
		now = time.Now()
		if err != nil && err != unix.EINTR {
			// Not expected with valid arguments. The requests in flight
			// start again on the goroutine path on new connections.
			for _, lc := range l.conns {
				if !lc.gone {
					l.closeFD(lc)
					if lc.waiting {
						l.handover(lc, nil)
					} else {
						l.handover(lc, lc.w.rq.do)
					}
				}
			}
			return
		}
		if !l.open && !now.Before(l.e.end) {
			// The closed loop ends with the run; the open loop sends
			// the slots it claimed and waits for their responses.
			return
		}
		for _, ev := range events[:max(n, 0)] {
			switch ev.Fd {
			case h1EvWake:
				return // the run was interrupted
			case h1EvTimer:
				l.armed = time.Time{} // expired: dispatch sets it again
				continue
			}
			lc := l.conns[ev.Fd]
			switch {
			case lc.gone:
			case lc.waiting:
				// Between requests: the server closed the idle
				// connection, or sent something unasked. The goroutine
				// path deals with either when it sends the claimed slot
				// (a closed connection is redialed, as there), and the
				// loop does not spin on a readable socket meanwhile.
				l.handover(lc, nil)
			case lc.writing:
				l.write(lc)
			default:
				l.read(lc, now)
			}
		}
		for _, lc := range l.conns {
			if !lc.gone && !lc.waiting && !now.Before(lc.deadline) {
				l.fail(lc, fmt.Errorf("http1 request: %w", os.ErrDeadlineExceeded), false)
			}
		}
	}
}

// dispatch sends the claimed slots that are due at now and sets the
// timer for the next one.
func (l *h1Loop) dispatch(now time.Time) {
	for {
		lc := l.queue.peek()
		if lc == nil {
			return
		}
		if lc.gone {
			l.queue.pop() // handed over with its slot
			continue
		}
		if now.Before(lc.intended) {
			l.setTimer(lc.intended)
			return
		}
		l.queue.pop()
		lc.waiting = false
		l.send(lc, lc.intended, now, l.e.issue(lc.w.st, lc.intended, now))
	}
}

// setTimer makes the timer expire at t (unless it is set for t already).
func (l *h1Loop) setTimer(t time.Time) {
	if t.Equal(l.armed) {
		return
	}
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(l.monotonic(t)))}
	if err := unix.TimerfdSettime(l.timer, unix.TFD_TIMER_ABSTIME, &its, nil); err != nil {
		// Not expected with a valid time; without the timer the loop
		// would sleep through its slots, so its workers go on, with
		// their claimed slots, on the goroutine path.
		slog.Error("bench: timerfd_settime failed; the open loop continues on goroutines", "err", err)
		for l.queue.size > 0 {
			if lc := l.queue.pop(); !lc.gone {
				l.handover(lc, nil)
			}
		}
		return
	}
	l.armed = t
}

// monotonic returns t on CLOCK_MONOTONIC, never earlier than t.
func (l *h1Loop) monotonic(t time.Time) time.Duration {
	return l.mono0 + t.Sub(l.clock0)
}

// h1YieldEvery is how often a loop passes through the Go scheduler. A
// goroutine that runs 10 ms (the runtime's forcePreemptNS) without going
// through the scheduler, even if mostly blocked in epoll_wait, is
// preempted by sysmon, which takes its P and then polls every 20 µs for a
// millisecond or more; in a perf profile that was 7 % of the generator's
// samples. But a runtime.Gosched is a thread hand-off: it puts the
// goroutine on the global run queue and wakes another thread to take it
// (two futex calls, two context switches; perf record -e
// syscalls:sys_enter_futex -g, all in goschedImpl). Once a millisecond,
// that was a futex per request of the open loop at 1,000 req/s, and
// under load the wait for the woken thread became send lag. Every 5 ms
// keeps the scheduler tick moving within sysmon's 10 ms at a fifth of
// the cost.
const h1YieldEvery = 5 * time.Millisecond

// signal wakes the loop up when the run's request context ends.
func (l *h1Loop) signal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		var one = [8]byte{1}
		unix.Write(l.wake, one[:])
	}
}

// waitMillis is epoll_wait's timeout: until the first request deadline
// or, in the closed loop, the end of the run, rounded up so that the loop
// does not wake too early; -1 (no timeout) in an open loop without
// requests in flight, whose timer wakes it for its next slot.
func (l *h1Loop) waitMillis(now time.Time) int {
	var next time.Time
	if !l.open {
		next = l.e.end
	}
	for _, lc := range l.conns {
		if !lc.gone && !lc.waiting && (next.IsZero() || lc.deadline.Before(next)) {
			next = lc.deadline
		}
	}
	if next.IsZero() {
		return -1
	}
	d := next.Sub(now)
	if d <= 0 {
		return 0
	}
	return int(min((d+time.Millisecond-1)/time.Millisecond, 1<<30))
}

// start begins the next request of lc's worker, unless the run is over
// for it: at once in the closed loop; in the open loop it claims the next
// slot, and dispatch sends it when it is due.
func (l *h1Loop) start(lc *h1LoopConn, now time.Time) {
	if l.open {
		intended, ok := l.e.claim(now)
		if !ok {
			l.finish(lc)
			return
		}
		lc.waiting, lc.intended = true, intended
		l.queue.push(lc)
		return
	}
	if !now.Before(l.e.end) {
		l.finish(lc)
		return
	}
	l.send(lc, now, now, !now.Before(l.e.warmEnd))
}

// send writes lc's request at now, its latency counted from from.
func (l *h1Loop) send(lc *h1LoopConn, from, now time.Time, inWindow bool) {
	lc.from, lc.deadline, lc.inWindow = from, now.Add(l.t.timeout), inWindow
	lc.wrote, lc.got, lc.bodyLeft, lc.n = 0, false, -1, 0
	l.write(lc)
}

// finish takes lc off the loop for good (the run is over for it).
func (l *h1Loop) finish(lc *h1LoopConn) {
	lc.gone = true
	l.active--
	l.closeFD(lc)
}

func (l *h1Loop) closeFD(lc *h1LoopConn) {
	if lc.c.fd >= 0 {
		unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, lc.c.fd, nil)
		unix.Close(lc.c.fd)
		lc.c.fd = -1
	}
}

func (l *h1Loop) write(lc *h1LoopConn) {
	req := l.t.req
	for lc.wrote < len(req) {
		n, err := unix.Write(lc.c.fd, req[lc.wrote:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// A large POST body fills the socket buffer: go on when it
			// drains (the response is read once the request is out).
			if !lc.writing {
				lc.writing = true
				l.mod(lc, unix.EPOLLOUT)
			}
			return
		case err != nil:
			err = fmt.Errorf("http1 write: %w", err)
			l.fail(lc, err, isConnLoss(err))
			return
		}
		lc.wrote += n
	}
	if lc.writing {
		lc.writing = false
		l.mod(lc, unix.EPOLLIN)
	}
}

func (l *h1Loop) mod(lc *h1LoopConn, events uint32) {
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, lc.c.fd, &unix.EpollEvent{Events: events, Fd: lc.idx}); err != nil {
		l.fail(lc, fmt.Errorf("epoll_ctl: %w", err), false)
	}
}

func (l *h1Loop) read(lc *h1LoopConn, now time.Time) {
	if lc.r == lc.end {
		lc.r, lc.end = 0, 0
	} else if lc.end == len(lc.buf) && lc.r > 0 {
		lc.end = copy(lc.buf, lc.buf[lc.r:lc.end])
		lc.r = 0
	}
	n, err := unix.Read(lc.c.fd, lc.buf[lc.end:])
	switch {
	case err == unix.EINTR || err == unix.EAGAIN:
		return
	case err != nil:
		err = fmt.Errorf("http1 read: %w", err)
		l.fail(lc, err, !lc.got && isConnLoss(err))
		return
	case n == 0:
		if !lc.got && lc.r == lc.end {
			// Closed before any byte of the response: the server had
			// dropped the idle connection (see http1Requester.do).
			l.fail(lc, fmt.Errorf("http1 read: %w", io.EOF), true)
		} else {
			l.fail(lc, fmt.Errorf("http1 read: %w", io.ErrUnexpectedEOF), false)
		}
		return
	}
	lc.got = true
	lc.end += n
	l.parse(lc, now)
}

// parse consumes what lc has buffered of its response and completes the
// request when the whole response is in.
func (l *h1Loop) parse(lc *h1LoopConn, now time.Time) {
	for lc.bodyLeft < 0 {
		data := lc.buf[lc.r:lc.end]
		end := headEnd(data)
		if end < 0 {
			if lc.r == 0 && lc.end == len(lc.buf) {
				// A head longer than the buffer: the goroutine path
				// reads it line by line.
				l.handover(lc, func(context.Context) (int64, error) {
					if err := l.t.arm(lc.c, lc.deadline); err != nil {
						return 0, err
					}
					n, keep, status, err := readResponse(lc.c.br)
					return l.t.conclude(lc.c, n, keep, status, err)
				})
			}
			return
		}
		l.hsrc.Reset(data[:end])
		l.hb.Reset(&l.hsrc)
		var h respHead
		if err := h.read(l.hb); err != nil {
			l.fail(lc, err, false)
			return
		}
		lc.r += end
		if h.status >= 100 && h.status < 200 {
			if h.status == 101 {
				l.fail(lc, badResponseError{"unexpected 101 Switching Protocols"}, false)
				return
			}
			continue // interim response: the final one follows
		}
		lc.head = h
		switch {
		case h.status == 204 || h.status == 304:
			lc.bodyLeft = 0
		case h.chunked || h.untilClose():
			l.handover(lc, func(context.Context) (int64, error) {
				if err := l.t.arm(lc.c, lc.deadline); err != nil {
					return 0, err
				}
				// lc.head, not h: a closure over h would move every
				// response's head to the heap.
				h := &lc.head
				n, err := h.discardBody(lc.c.br)
				return l.t.conclude(lc.c, n, h.keepAlive() && err == nil && !h.untilClose(), h.status, err)
			})
			return
		default:
			lc.bodyLeft = h.length
		}
	}
	take := min(lc.bodyLeft, int64(lc.end-lc.r))
	lc.r += int(take)
	lc.bodyLeft -= take
	lc.n += take
	if lc.bodyLeft > 0 {
		return
	}
	var err error
	switch {
	case lc.head.status >= 300:
		err = httpStatusError{lc.head.status}
	case l.t.payload > 0 && lc.n != int64(l.t.payload):
		err = badResponseError{fmt.Sprintf("echoed %d bytes of %d", lc.n, l.t.payload)}
	}
	l.record(lc, now, lc.n, err)
	lc.reused = true
	if !lc.head.keepAlive() {
		l.closeFD(lc)
		l.handover(lc, nil) // the next request dials
		return
	}
	l.start(lc, now)
}

// headEnd returns the length of the response head at the start of data
// (through its empty line), or -1 if data does not hold all of it.
func headEnd(data []byte) int {
	i := bytes.IndexByte(data, '\n')
	for i >= 0 {
		rest := data[i+1:]
		switch {
		case len(rest) > 0 && rest[0] == '\n':
			return i + 2
		case len(rest) > 1 && rest[0] == '\r' && rest[1] == '\n':
			return i + 3
		}
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return -1
		}
		i += 1 + j
	}
	return -1
}

func (l *h1Loop) record(lc *h1LoopConn, now time.Time, n int64, err error) {
	kind := ""
	if err != nil {
		kind = classify(l.e.reqCtx, err)
	}
	l.e.record(lc.w.st, lc.from, now, lc.inWindow, n, err, kind)
}

// fail ends lc's request in flight with err and hands the worker over to
// the goroutine path. retry: the connection was found closed before any
// of the response, and had carried a request before; as on the goroutine
// path, the request is sent once more on a new connection.
func (l *h1Loop) fail(lc *h1LoopConn, err error, retry bool) {
	l.closeFD(lc)
	if retry && lc.reused && !l.t.aborted.Load() {
		l.handover(lc, lc.w.rq.do)
		return
	}
	l.record(lc, time.Now(), 0, err)
	l.handover(lc, nil)
}

// handover moves lc's worker to the goroutine path for the rest of the
// run. pending, if not nil, completes the request in flight there, its
// latency still counted from lc.from.
func (l *h1Loop) handover(lc *h1LoopConn, pending func(context.Context) (int64, error)) {
	if !lc.gone {
		lc.gone = true
		l.active--
	}
	c := lc.c
	if c.fd >= 0 {
		if l.ep >= 0 {
			unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
		}
		f := os.NewFile(uintptr(c.fd), "quicmesh-bench")
		nc, err := net.FileConn(f) // a duplicate, in the runtime's poller
		f.Close()
		c.fd = -1
		c.mu.Lock()
		if err == nil && l.t.aborted.Load() {
			nc.Close()
			err = context.Canceled
		}
		if err == nil {
			c.c = nc
			// What the loop read and did not consume comes first.
			src := io.MultiReader(bytes.NewReader(bytes.Clone(lc.buf[lc.r:lc.end])), nc)
			if c.br == nil {
				c.br = bufio.NewReaderSize(src, h1ReadBuffer)
			} else {
				c.br.Reset(src)
			}
		}
		c.mu.Unlock()
		if err != nil && pending != nil {
			// The response in flight is lost with the connection.
			l.record(lc, time.Now(), 0, fmt.Errorf("http1 handover: %w", err))
			pending = nil
		}
	}
	from, inWindow, w, e := lc.from, lc.inWindow, lc.w, l.e
	waiting, intended := lc.waiting, lc.intended
	lc.waiting = false
	l.wg.Go(func() {
		if pending != nil {
			n, err := pending(e.reqCtx)
			kind := ""
			if err != nil {
				kind = classify(e.reqCtx, err)
			}
			e.record(w.st, from, time.Now(), inWindow, n, err, kind)
		}
		if waiting && !e.sendAt(w, intended) {
			return // the slot claimed on the loop is sent first
		}
		e.runWorker(w)
	})
}

// rawPreconnect dials every slot's raw socket for the event loops. A slot
// that fails stays without one: its worker dials on the goroutine path
// and reports the failure there.
func (t *http1Target) rawPreconnect(ctx context.Context) {
	ra, err := net.ResolveTCPAddr("tcp", t.addr)
	if err != nil || ra.Zone != "" {
		return
	}
	// A unix.Sockaddr is written by Connect (its raw form): one per dial.
	family := unix.AF_INET
	sa := func() unix.Sockaddr { return &unix.SockaddrInet4{Port: ra.Port, Addr: [4]byte(ra.IP.To4())} }
	if ra.IP.To4() == nil {
		family = unix.AF_INET6
		sa = func() unix.Sockaddr { return &unix.SockaddrInet6{Port: ra.Port, Addr: [16]byte(ra.IP.To16())} }
	}
	timeout := t.timeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	var wg sync.WaitGroup
	for _, c := range t.conns {
		wg.Go(func() {
			if fd, err := rawDial(family, sa(), timeout); err == nil {
				c.fd = fd
			}
		})
	}
	wg.Wait()
}

// rawDial connects a TCP socket outside the Go runtime's poller, with
// TCP_NODELAY like net.Dial, and returns it non-blocking.
func rawDial(family int, sa unix.Sockaddr, timeout time.Duration) (fd int, err error) {
	fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return -1, fmt.Errorf("TCP_NODELAY: %w", err)
	}
	err = unix.Connect(fd, sa)
	if err == nil {
		return fd, nil
	}
	if err != unix.EINPROGRESS && err != unix.EINTR {
		return -1, fmt.Errorf("connect: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return -1, fmt.Errorf("connect: %w", os.ErrDeadlineExceeded)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(min((left+time.Millisecond-1)/time.Millisecond, 1<<30)))
		if err == unix.EINTR || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("connect: poll: %w", err)
		}
		break
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return -1, fmt.Errorf("connect: SO_ERROR: %w", err)
	}
	if soerr != 0 {
		return -1, fmt.Errorf("connect: %w", unix.Errno(soerr))
	}
	return fd, nil
}
