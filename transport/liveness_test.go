package transport_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// hogCPU keeps every core busy until the test ends, on top of whatever
// else the machine runs: the starvation that made a 1 s idle timeout
// close live connections (docs/design.md, "Failure detection").
func hogCPU(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range max(2, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				_ = n * n
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// The liveness watch never declares a live peer dead, on a node starved
// of CPU (every core hogged, the race detector, whatever else the machine
// runs): not a peer whose app answers slowly (its connection silent for
// three times the liveness timeout but for the ACKs of our PINGs), nor
// one with an idle tunnel, nor one busy serving a stream of requests.
// Without the PINGs the slow requests fail: the peer would have nothing
// to answer for longer than the timeout.
func TestLivenessSparesLivePeersUnderCPUStarvation(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	quiet := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
	busy := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
	// Default liveness, but a dial (before the hogs start) must not
	// fail the test on a machine loaded by other jobs.
	p := newPool(t, ca, transport.Limits{DialTimeout: 10 * time.Second, HandshakeTimeout: 10 * time.Second})
	failed := failures(p)
	limits := quiet.ep.Limits()
	quietConn := get(t, p, quiet.ep.Addr().String())
	busyConn := get(t, p, busy.ep.Addr().String())
	hogCPU(t)

	soak := 5 * time.Second
	slow := 3 * limits.LivenessTimeout
	ctx, cancel := context.WithTimeout(context.Background(), soak)
	defer cancel()
	var wg sync.WaitGroup
	var slowDone, busyDone atomic.Int64
	errs := make(chan error, 100)
	roundTrip := func(pc *transport.PeerConn, url string) error {
		defer pc.Begin()()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		resp, err := pc.RoundTrip(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	// An idle tunnel for the whole soak.
	endTunnel := quietConn.Begin()
	str, err := quietConn.OpenTunnel(context.Background(), "svc:80")
	if err != nil {
		t.Fatal(err)
	}
	str.Write([]byte("x"))
	<-quiet.started
	// Slow requests, two at a time, started until the soak ends.
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := roundTrip(quietConn, "https://peer/?sleep="+slow.String()); err != nil {
					errs <- fmt.Errorf("slow request: %w", err)
					return
				}
				slowDone.Add(1)
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := roundTrip(busyConn, "https://peer/"); err != nil {
					errs <- fmt.Errorf("busy request: %w", err)
					return
				}
				busyDone.Add(1)
			}
		})
	}
	wg.Wait()
	str.Reset(0)
	endTunnel()
	close(errs)
	lv := p.LivenessStats()
	t.Logf("%v soak, %d hogs: %d slow requests (%v each), %d busy requests; watch %+v", soak, max(2, runtime.GOMAXPROCS(0)), slowDone.Load(), slow, busyDone.Load(), lv)
	for err := range errs {
		t.Error(err)
	}
	if lv.Declared != 0 || !quietConn.Alive() || !busyConn.Alive() {
		t.Fatalf("live peers declared dead: %+v (quiet connection alive: %v, busy: %v)", lv, quietConn.Alive(), busyConn.Alive())
	}
	select {
	case f := <-failed:
		t.Fatalf("a live peer reported failed: %+v", f)
	default:
	}
	if slowDone.Load() == 0 || busyDone.Load() == 0 {
		t.Fatal("the soak completed no requests")
	}
	// The slow requests must have needed the PINGs (else the test
	// proves nothing about them), unless the starved watch kept starting
	// over: then it never got far enough to send one.
	if lv.Pings == 0 && lv.Starved == 0 {
		t.Fatal("the watch sent no PING while the slow requests were silent")
	}
}

// What the liveness watch costs on an idle connection, measured side by
// side with a pool that runs without it (QUIC's keep-alive alone): the
// watch PINGs after half the liveness timeout of silence, so an idle
// connection carries about one PING and its ACK per half timeout plus a
// poll (750 ms with the defaults), instead of keep-alive PINGs from
// both sides per KeepAlive (1.25 s). The bound is generous for a loaded
// machine but catches a watch that PINGs every poll or faster.
func TestLivenessCostOnIdleConnection(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
	// Default liveness, but a dial must not fail the test on a machine
	// loaded by other jobs.
	dial := transport.Limits{DialTimeout: 10 * time.Second, HandshakeTimeout: 10 * time.Second}
	watched := get(t, newPool(t, ca, dial), srv.ep.Addr().String())
	dial.LivenessTimeout = -1
	unwatched := get(t, newPool(t, ca, dial), srv.ep.Addr().String())
	limits := srv.ep.Limits()
	// Past the handshake's own packets (ACKs, HTTP/3 SETTINGS).
	time.Sleep(limits.LivenessTimeout)
	w0, u0 := watched.Conn.ConnectionStats().PacketsSent, unwatched.Conn.ConnectionStats().PacketsSent
	start := time.Now()
	time.Sleep(3 * limits.LivenessTimeout)
	secs := time.Since(start).Seconds()
	w := float64(watched.Conn.ConnectionStats().PacketsSent-w0) / secs
	u := float64(unwatched.Conn.ConnectionStats().PacketsSent-u0) / secs
	t.Logf("idle connection, packets/s sent by the dialling side: %.2f with the liveness watch (timeout %v), %.2f with the keep-alive alone (%v)", w, limits.LivenessTimeout, u, limits.KeepAlive)
	// A PING every poll would be 4/s with the defaults, ACKs of the
	// server's packets on top. Measured over 3 s (a handful of packets,
	// so noisy), -race at load 35: 1.3-4.0/s with the watch, 2.3-3.7/s
	// with the keep-alive alone, whose PINGs both sides send. The bound
	// catches a watch that PINGs much faster than its half timeout.
	if perPoll := float64(time.Second) / float64(limits.LivenessTimeout/4); w >= 2*perPoll {
		t.Fatalf("the liveness watch sends %.2f packets/s on an idle connection; want under two per poll (%.0f/s)", w, 2*perPoll)
	}
	if !watched.Alive() || !unwatched.Alive() {
		t.Fatal("an idle connection to a live peer died")
	}
}

// A stall of this process while the answer to a PING is due defers the
// watch's verdict until a poll without one (transport.Silence.Verdict):
// what a process starved in many short waits looks like to the watch
// (no poll late by a whole interval, no goroutine waiting that long, so
// it never starts over, yet the peer's ACK counted over half the
// deadline late) is injected: the stall through the pool's hook, the
// late answer by the relay, which drops the peer's packets until the
// verdict was deferred. Without the deferral the live peer was declared
// dead at the deadline ("peer unresponsive"), as with -race at load
// 25-45 (docs/benchmarks.md). A peer that stays silent is still
// declared dead, by twice the deadline.
func TestLivenessDefersVerdictWhileStalled(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	for _, tt := range []struct {
		name   string
		answer bool // the peer's packets get through once the verdict was deferred
	}{
		{"the answer comes after the deadline", true},
		{"the peer stays silent", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
			relay := testkit.NewUDPRelay(t, srv.ep.Addr().String())
			p := newPool(t, ca, transport.Limits{})
			limits := srv.ep.Limits()
			var stalled atomic.Bool
			// Just under a poll: long enough to defer, too short to
			// start the watch over.
			transport.SetStallHook(p, func() time.Duration {
				if stalled.Load() {
					return limits.LivenessTimeout/4 - time.Millisecond
				}
				return 0
			})
			pc := get(t, p, relay.Addr())

			restarted := testkit.LastChange(t, func() uint64 { return p.LivenessStats().Starved })
			stalled.Store(true)
			relay.Blackhole(true)
			frozen := time.Now()
			testkit.Eventually(t, "a deferred verdict", func() bool { return p.LivenessStats().Deferred > 0 || !pc.Alive() })
			if lv := p.LivenessStats(); !pc.Alive() {
				t.Fatalf("declared dead %v after the answers stopped although this process stalled while they were due (watch %+v): %v",
					time.Since(frozen), lv, context.Cause(pc.Conn.Context()))
			}
			if tt.answer {
				received := pc.Conn.ConnectionStats().PacketsReceived
				relay.Blackhole(false)
				testkit.Eventually(t, "the peer's answer", func() bool {
					return pc.Conn.ConnectionStats().PacketsReceived > received || !pc.Alive()
				})
				stalled.Store(false)
				lv := p.LivenessStats()
				t.Logf("answer counted %v after the answers stopped; watch %+v", time.Since(frozen), lv)
				if !pc.Alive() || lv.Declared != 0 {
					t.Fatalf("a live peer declared dead (watch %+v): %v", lv, context.Cause(pc.Conn.Context()))
				}
				return
			}
			<-pc.Conn.Context().Done() // the watch, or at the latest the idle timeout
			detected := time.Since(frozen)
			lv := p.LivenessStats()
			t.Logf("declared dead after %v; watch %+v", detected, lv)
			// Twice the deadline as the polls credit it, which a
			// loaded machine at most doubles (transport.VerdictBound),
			// from the freeze or the watch's last start-over.
			deadline := transport.LivenessDeadline(limits, pc.Conn.ConnectionStats())
			since := detected - testkit.Later(frozen, restarted()).Sub(frozen)
			if bound := transport.VerdictBound(limits.LivenessTimeout, deadline, true); lv.Declared != 1 || since > bound {
				t.Fatalf("a silent peer declared dead after %v, %v after the watch last started over, by %+v; want the liveness watch within %v", detected, since, lv, bound)
			}
		})
	}
}
