package transport_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// Bounds the Initial flood test enforces; docs/security.md records the
// figures measured against them. Growth is measured over the process's
// baseline right before the flood, since the sidecar under test shares
// the test process.
const (
	// floodDuration is the attack time, in windows alternating with as
	// much control time; longer than the 3 s handshake timeout, so state
	// created early has to expire while the flood goes on.
	floodDuration = 4 * time.Second
	// floodStarved is a wait to run that marks a latency window as
	// starved: five times Go's 10 ms preemption slice, so only a process
	// without a core (or a runtime with thousands of runnable
	// goroutines) waits that long.
	floodStarved = 50 * time.Millisecond
	// floodCleanWindows is how many windows of each kind must be clean
	// (at load 15, half the windows or more were starved); the flood
	// ends at floodMaxTime (or a quarter of the time left to the test
	// deadline) if they never are.
	floodCleanWindows = int(floodDuration / (500 * time.Millisecond))
	// floodMaxTime bounds one flood: loaded runs took up to 3m31s to
	// get their clean windows; make test gives the package 12 min.
	floodMaxTime = 3 * time.Minute
	// floodHeapGrowth bounds live heap growth during the flood.
	floodHeapGrowth = 64 << 20
	// floodRSSGrowth bounds RSS growth (the race detector's shadow memory
	// roughly triples it).
	floodRSSGrowth = 100 << 20
	// floodGoroutineGrowth bounds extra goroutines: each handshake in
	// progress holds three or four (connection, TLS, accept wait).
	floodGoroutineGrowth = 4*transport.DefaultMaxHandshakes + 64
	// floodReturnWithin is how soon after the flood memory must be back
	// near the baseline.
	floodReturnWithin = time.Minute
	// floodReturnSlack is "near": RSS (Go-retained memory under the race
	// detector) at most this far above baseline.
	floodReturnSlack = 32 << 20
)

// floodCPURatio bounds the process CPU an attack window may use against
// a control window before starvation in attack windows is laid at the
// server's door (see testInitialFlood). Measured under -race with two
// busy loops at load 8-25, 13 runs: 0.98-1.23x, valid Initials (each answered
// by a Retry) and garbage alike.
const floodCPURatio = 2

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floodRate is the attack rate in packets per second. The race detector
// makes the server's work per packet many times dearer, so the rate is
// scaled down with it; at 4,000/s unbounded code still holds thousands of
// handshakes and fails within a second.
func floodRate() int {
	if raceEnabled {
		return 4000
	}
	return 10000
}

// echoServer accepts mesh connections and echoes every stream.
func echoServer(t *testing.T, ep *transport.Endpoint) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ep.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				for {
					str, err := conn.AcceptStream(context.Background())
					if err != nil {
						return
					}
					wg.Go(func() {
						io.Copy(str, str)
						str.Close()
					})
				}
			})
		}
	})
	t.Cleanup(func() { ep.Close(); wg.Wait() })
}

// roundTrip opens a stream, sends a small request and reads the echo.
func roundTrip(ctx context.Context, conn *quic.Conn) (time.Duration, error) {
	start := time.Now()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	defer str.CancelRead(0)
	str.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("legitimate request")
	if _, err := str.Write(msg); err != nil {
		return 0, err
	}
	str.Close()
	if _, err := io.ReadFull(str, make([]byte, len(msg))); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// memSample is what the flood test watches.
type memSample struct {
	heap, rss  uint64
	retained   uint64 // memory the Go runtime holds from the OS (not released)
	goroutines int
}

func sampleMem() memSample {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	return memSample{
		heap:       s[0].Value.Uint64(),
		retained:   s[1].Value.Uint64() - s[2].Value.Uint64(),
		rss:        readRSS(),
		goroutines: runtime.NumGoroutine(),
	}
}

// returned is the figure that must come back near the baseline after a
// flood: RSS, except under the race detector, whose shadow memory is not
// given back to the OS by the Go runtime; there it is what the Go runtime
// retains.
func (m memSample) returned() uint64 {
	if raceEnabled {
		return m.retained
	}
	return m.rss
}

func readRSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// TestInitialFloodBoundsState floods the mesh port with client Initials
// from many source ports, as a spoofing attacker would: valid ones with a
// real ClientHello, and long-header garbage. The sidecar may hold only a
// bounded amount of state for peers that have not proven their address,
// a legitimate peer's requests and new dials keep working, and memory is
// back near the baseline soon after.
func TestInitialFloodBoundsState(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the loopback interface for several seconds")
	}
	for _, kind := range []floodKind{floodValidInitials, floodGarbage} {
		t.Run(kind.String(), func(t *testing.T) { testInitialFlood(t, kind) })
	}
}

func testInitialFlood(t *testing.T, kind floodKind) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	// What is measured is the state the flood makes the listener hold
	// and the latency legitimate traffic sees. Under -race on a loaded
	// machine the flood can starve the server's packet loop for over a
	// second, which the default failure detection (1 s) rightly calls a
	// dead peer (a stateless reset then ended the legitimate connection
	// in 1 of 3 loaded runs); longer timeouts keep that out of this test.
	limits := transport.Limits{IdleTimeout: 5 * time.Second, DialTimeout: transport.DefaultHandshakeTimeout}
	srv, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, serverID), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, srv)
	newClient := func() *transport.Endpoint {
		ep, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, clientID), Limits: limits})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ep.Close() })
		return ep
	}
	client := newClient()
	ctx := context.Background()
	conn, err := client.Dial(ctx, srv.Addr().String(), identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// One second's worth of distinct Initials, built beforehand and sent
	// round-robin: each connection ID comes back once a second, while an
	// unbounded server would still hold the state of its last attempt (3 s
	// handshake timeout), so it holds rate × 1 s handshakes. More would
	// only inflate the live heap the measurements start from.
	pkts := buildInitials(t, kind, floodRate())
	runtime.GC()
	debug.FreeOSMemory() // a clean baseline; the product must manage without this
	base := sampleMem()

	// The machine is shared and busy, so latency is compared under equal
	// load: the flood alternates between attack windows and control
	// windows (same rate and sockets, packets the server drops on sight),
	// and each legitimate request is filed under the window it ran in.
	// The difference is what the server pays for attack packets.
	//
	// A window in which this process was starved of CPU is set aside,
	// whatever its kind: a p99 over a few hundred requests is decided by
	// a handful of such waits, which the other jobs on a 2-core machine
	// deal out at random (one attack window's 89 ms against 17 ms in the
	// control windows failed a run; another run's generator reached only
	// half its rate). Starved means: the flood's senders, which tick
	// every 5 ms in both kinds of window, went floodStarved without a
	// tick, or testkit.SchedWatch saw a wait that long, or the window's
	// own timer was that late.
	// The flood goes on until each kind has floodCleanWindows clean
	// windows. Starvation the attack causes is not hidden by that: attack
	// windows starved much more often than control windows fail the test.
	const window = 500 * time.Millisecond
	// The flood's time is bounded well inside the test deadline: at load
	// 40 a run needed 13m43s for its clean windows, more than make test
	// gives the whole package. Past the budget the test fails below
	// (too few clean windows) instead of taking the package down.
	budget := min(floodMaxTime, time.Until(testkit.HangGuard(t))/4)
	floodCtx, stopFlood := context.WithTimeout(ctx, budget)
	defer stopFlood()
	f := startFlood(floodCtx, t, srv.Addr(), pkts, floodRate(), 500)
	f.Control.Store(true)
	var (
		mu                sync.Mutex
		windowID          int
		cur               []time.Duration  // the current window's samples
		during, baseline  []time.Duration  // from clean windows
		clean, starved    [2]int           // by kind: [attack, control]
		cpu               [2]time.Duration // process CPU time, by kind
		floodTime         time.Duration
		freshDialErr      error
		freshDialAttempts int
		freshDialDone     atomic.Bool
	)
	kindOf := func(control bool) int {
		if control {
			return 1
		}
		return 0
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		sched := testkit.NewSchedWatch()
		defer sched.Stop()
		start := time.Now()
		next := start.Add(window)
		cpuMark := processCPU()
		timer := time.NewTimer(window)
		defer timer.Stop()
		for {
			select {
			case <-floodCtx.Done():
				return
			case <-timer.C:
				now := time.Now() // when this ran; the channel carries when it was due
				late := now.Sub(next) >= floodStarved
				mu.Lock()
				k := kindOf(f.Control.Load())
				c := processCPU()
				cpu[k], cpuMark = cpu[k]+c-cpuMark, c
				gap := f.TakeMaxGap() >= floodStarved
				if sched.Starved(floodStarved) || late || gap {
					starved[k]++
				} else {
					clean[k]++
					if k == 1 {
						baseline = append(baseline, cur...)
					} else {
						during = append(during, cur...)
					}
				}
				cur, windowID = cur[:0], windowID+1
				f.Control.Store(!f.Control.Load())
				done := now.Sub(start) >= 2*floodDuration && min(clean[0], clean[1]) >= floodCleanWindows && freshDialDone.Load()
				if done {
					floodTime = now.Sub(start)
				}
				mu.Unlock()
				if done {
					stopFlood()
					return
				}
				next = time.Now().Add(window)
				timer.Reset(window)
			}
		}
	})
	var (
		legitErr     error
		legitStarved int // requests that timed out while this process was starved
		legitRedials int // connections the server timed out while this process was starved
	)
	wg.Go(func() {
		sched := testkit.NewSchedWatch()
		defer sched.Stop()
		// life watches the time since the last request that succeeded:
		// the server closes a connection it has heard nothing from for
		// the idle timeout, so that whole time is what explains it.
		life := testkit.NewSchedWatch()
		defer life.Stop()
		lc := conn
		for floodCtx.Err() == nil {
			mu.Lock()
			id := windowID
			mu.Unlock()
			sched.Starved(0) // the request's interval starts
			rtt, err := roundTrip(ctx, lc)
			if err != nil {
				// As for the fresh dial below: a request that timed out
				// while this process was starved of CPU (two busy loops
				// plus load 20 on the 2 cores: 71 of 80 attack windows
				// starved, and a request missed roundTrip's 5 s) says
				// nothing about the server, as long as the connection
				// lives. One that failed while the process ran fails
				// the test.
				if lc.Context().Err() == nil && sched.Starved(floodStarved) {
					legitStarved++
					continue
				}
				// A connection the server timed out (IdleTimeout; the
				// client learns it from a stateless reset) while this
				// process was starved since the last request that
				// succeeded: the flood's packets filled the socket
				// buffer that the starved packet loop did not drain, and
				// the peer's were dropped as on an overloaded host (a run
				// at load 40 with 630 of 640 windows starved saw it). The
				// peer dials again, as the fresh dial below does; on a
				// machine that runs this process, a connection the flood
				// kills fails the test.
				if lc.Context().Err() != nil && life.Starved(floodStarved) {
					legitRedials++
					for floodCtx.Err() == nil {
						life.Starved(0)
						c, err := client.Dial(floodCtx, srv.Addr().String(), identity.MustParseID(serverID))
						if err == nil {
							lc = c
							break
						}
						if floodCtx.Err() == nil && !life.Starved(floodStarved) {
							legitErr = fmt.Errorf("dialling again after the connection was lost while starved: %w", err)
							return
						}
					}
					continue
				}
				legitErr = err
				return
			}
			life.Starved(0) // heard from the server: the interval starts again
			mu.Lock()
			if id == windowID { // else it straddled a switch
				cur = append(cur, rtt)
			}
			mu.Unlock()
			// Nearly back to back: thousands of samples per side, so a p99
			// is not decided by the handful of scheduler stalls a busy
			// machine deals out at random, while leaving the server most
			// of the CPU (back to back, under -race, the legitimate load
			// alone starved the server's packet loop).
			time.Sleep(time.Millisecond)
		}
	})
	wg.Go(func() {
		// A peer dialling for the first time during the flood gets in,
		// within the dial timeout. An attempt that fails while this
		// process was starved is made again while the flood goes on:
		// the flood's packets then fill the server's socket buffer and
		// the dial's are dropped as on an overloaded host, whatever the
		// server does (a dial timed out once at load 15). A server that
		// never lets a new peer in fails at the hang guard.
		defer freshDialDone.Store(true)
		time.Sleep(floodDuration)
		for attempt := 1; ; attempt++ {
			sched := testkit.NewSchedWatch()
			c, err := newClient().Dial(ctx, srv.Addr().String(), identity.MustParseID(serverID))
			if err == nil {
				_, err = roundTrip(ctx, c)
				c.CloseWithError(0, "")
			}
			starved := sched.Starved(floodStarved)
			sched.Stop()
			mu.Lock()
			freshDialErr, freshDialAttempts = err, attempt
			mu.Unlock()
			if err == nil || !starved || floodCtx.Err() != nil {
				return
			}
		}
	})

	peak := base
	exceeded := ""
	tick := time.NewTicker(50 * time.Millisecond)
sampling:
	for {
		select {
		case <-floodCtx.Done():
			break sampling
		case <-tick.C:
		}
		s := sampleMem()
		peak.heap, peak.rss, peak.goroutines = max(peak.heap, s.heap), max(peak.rss, s.rss), max(peak.goroutines, s.goroutines)
		switch {
		case s.heap > base.heap+floodHeapGrowth:
			exceeded = "heap"
		case s.rss > base.rss+floodRSSGrowth:
			exceeded = "RSS"
		case s.goroutines > base.goroutines+floodGoroutineGrowth:
			exceeded = "goroutines"
		}
		if exceeded != "" {
			stopFlood() // fail fast: an unbounded server would take the machine with it
			break
		}
	}
	tick.Stop()
	sent := f.wait()
	wg.Wait()
	if floodTime == 0 {
		floodTime = time.Since(f.started)
	}
	rate := float64(sent) / (floodTime.Seconds() / 2)
	t.Logf("%s: %d attack packets at %.0f/s from 500 source ports in %v windows over %v, alternating with control windows; windows clean/starved (a wait of %v or more): attack %d/%d, control %d/%d",
		kind, sent, rate, window, floodTime.Round(time.Millisecond), floodStarved, clean[0], starved[0], clean[1], starved[1])
	t.Logf("peak growth: heap %+.1f MiB, RSS %+.1f MiB, goroutines %+d (baseline heap %.1f MiB, RSS %.1f MiB, %d goroutines)",
		mib(peak.heap-base.heap), mib(peak.rss-base.rss), peak.goroutines-base.goroutines, mib(base.heap), mib(base.rss), base.goroutines)
	if exceeded != "" {
		t.Fatalf("flood stopped early: %s above its bound (heap +%d MiB, RSS +%d MiB, goroutines +%d allowed)",
			exceeded, floodHeapGrowth>>20, floodRSSGrowth>>20, floodGoroutineGrowth)
	}
	if rate < 0.8*float64(floodRate()) {
		t.Logf("the generator reached only %.0f of %d packets/s on this machine", rate, floodRate())
	}
	if freshDialAttempts > 1 {
		t.Logf("the new peer's dial was made %d times: earlier attempts failed while the process was starved", freshDialAttempts)
	}
	if legitStarved > 0 {
		t.Logf("%d legitimate requests timed out while the process was starved, on a connection that lived on", legitStarved)
	}
	if legitRedials > 0 {
		t.Logf("the legitimate connection was timed out by the server %d times while the process was starved; it was dialled again", legitRedials)
	}
	if legitErr != nil {
		t.Fatalf("legitimate request failed during the flood: %v", legitErr)
	}
	if freshDialErr != nil {
		t.Fatalf("a new peer could not connect during the flood (attempt %d): %v", freshDialAttempts, freshDialErr)
	}
	// CPU the process used per window of each kind: what answering the
	// attack's packets costs beyond dropping the control's.
	var cpuPer [2]time.Duration
	for k := range cpuPer {
		cpuPer[k] = cpu[k] / time.Duration(max(clean[k]+starved[k], 1))
	}
	t.Logf("process CPU per %v window: attack %v, control %v (%.2fx)", window, cpuPer[0].Round(time.Millisecond), cpuPer[1].Round(time.Millisecond),
		float64(cpuPer[0])/float64(max(cpuPer[1], 1)))
	// On a machine with CPU to spare the attack's packets must not make
	// this process wait to run more often. On one without (load 33 on 2
	// cores), whatever extra CPU the attack windows need, a Retry per
	// valid Initial, shows up as waits too: there the comparison of waits
	// failed runs of a server that bounds its work correctly. So the
	// waits count against the server only if its CPU use per attack
	// window is also out of line with the control windows'
	// (floodCPURatio).
	if starved[0] > 2*starved[1]+2 && cpuPer[0] > floodCPURatio*cpuPer[1] {
		t.Errorf("%d attack windows starved against %d control windows, attack windows using %v of CPU against %v: the attack starves the process",
			starved[0], starved[1], cpuPer[0], cpuPer[1])
	}
	if min(clean[0], clean[1]) < floodCleanWindows {
		t.Fatalf("only %d attack and %d control windows of %d were not starved within the flood's budget of %v (a quarter of the time left to the test deadline, at most %v): the machine starved this process too much to compare latency; %d of each kind are needed",
			clean[0], clean[1], windowID, budget.Round(time.Second), floodMaxTime, floodCleanWindows)
	}
	p99, baseP99 := percentile(during, 0.99), percentile(baseline, 0.99)
	t.Logf("legitimate requests: in control windows p50 %v p99 %v (n=%d); in attack windows p50 %v p99 %v (n=%d)",
		percentile(baseline, 0.5), baseP99, len(baseline), percentile(during, 0.5), p99, len(during))
	if p99 > 5*baseP99 {
		t.Errorf("legitimate p99 %v during the attack, want within 5× the control windows' %v", p99, baseP99)
	}

	// Memory and goroutines return near the baseline without help.
	start := time.Now()
	for {
		s := sampleMem()
		if s.returned() <= base.returned()+floodReturnSlack && s.goroutines <= base.goroutines+16 {
			t.Logf("back near baseline %v after the flood: RSS %+.1f MiB, Go-retained %+.1f MiB, heap %+.1f MiB, goroutines %+d",
				time.Since(start).Round(time.Millisecond), mib(s.rss)-mib(base.rss), mib(s.retained)-mib(base.retained), mib(s.heap)-mib(base.heap), s.goroutines-base.goroutines)
			break
		}
		if time.Since(start) > floodReturnWithin {
			t.Fatalf("%v after the flood: RSS %+.1f MiB, Go-retained %+.1f MiB (slack %d MiB), goroutines %+d",
				floodReturnWithin, mib(s.rss)-mib(base.rss), mib(s.retained)-mib(base.retained), floodReturnSlack>>20, s.goroutines-base.goroutines)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// BenchmarkDial measures a full mesh dial on loopback with and without
// source-address validation (a Retry round trip); docs/security.md
// records the figures behind the default RetryThreshold.
func BenchmarkDial(b *testing.B) {
	for _, bc := range []struct {
		name      string
		threshold int
	}{{"no_retry", 1 << 20}, {"retry_always", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			ca := identitytest.NewCA(b, "t.local")
			limits := transport.Limits{RetryThreshold: bc.threshold}
			srv, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(b, ca, serverID), Limits: limits})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			go func() {
				for {
					c, err := srv.Accept(context.Background())
					if err != nil {
						return
					}
					go func() { <-c.Context().Done() }()
				}
			}()
			client, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(b, ca, clientID)})
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			id := identity.MustParseID(serverID)
			for b.Loop() {
				c, err := client.Dial(context.Background(), srv.Addr().String(), id)
				if err != nil {
					b.Fatal(err)
				}
				c.CloseWithError(0, "")
			}
		})
	}
}
