package h2tcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// A frozen peer (SIGSTOP): the kernel completes the TCP connect, the
// process never answers the TLS handshake. The dial fails within the
// dial timeout, as a QUIC dial to a silent peer does, not after the whole
// handshake timeout, reason timeout (a path failure for the fallback
// policy).
func TestDialToFrozenPeerFailsWithinDialTimeout(t *testing.T) {
	ca := identitytest.NewCA(t, "test.local")
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testkit.SilentTCP(t, tcp) // and never a byte back
	limits := transport.Limits{DialTimeout: 500 * time.Millisecond, HandshakeTimeout: 10 * time.Second}
	pool, err := NewPool(Config{Identity: identitytest.Provider(t, ca, clientID), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	start := time.Now()
	_, err = pool.Get(testkit.HangCtx(t), tcp.Addr().String(), identity.MustParseID(serverID))
	took := time.Since(start)
	de, ok := errors.AsType[*transport.DialError](err)
	if !ok || de.Reason != transport.ReasonTimeout {
		t.Fatalf("dial to a frozen peer: %v; want a DialError with reason %q", err, transport.ReasonTimeout)
	}
	// Far below the handshake timeout; the slack is for a loaded machine.
	if took < limits.DialTimeout || took > limits.HandshakeTimeout/2 {
		t.Fatalf("dial to a frozen peer failed after %v; want about the dial timeout %v (handshake timeout %v)", took, limits.DialTimeout, limits.HandshakeTimeout)
	}
	t.Logf("dial to a frozen peer failed after %v: %v", took, err)
}

// freezingRelay forwards TCP connections to target until frozen: then it
// stops forwarding in both directions, as a peer frozen by SIGSTOP (or a
// partition) looks from the dialling side. While held, it keeps what the
// peer sends until released: an answer that comes late.
type freezingRelay struct {
	ln     net.Listener
	frozen chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	holdMu sync.Mutex
	held   chan struct{} // non-nil while held; closed on release
}

func newFreezingRelay(t *testing.T, target string) *freezingRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &freezingRelay{ln: ln, frozen: make(chan struct{})}
	var mu sync.Mutex
	var conns []net.Conn
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			r.wg.Go(func() { r.copy(up, c, false) })
			r.wg.Go(func() { r.copy(c, up, true) })
		}
	})
	t.Cleanup(func() {
		r.freeze()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *freezingRelay) Addr() string { return r.ln.Addr().String() }

func (r *freezingRelay) freeze() { r.once.Do(func() { close(r.frozen) }) }

// hold keeps the peer's bytes from the dialling side until release.
func (r *freezingRelay) hold() {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	if r.held == nil {
		r.held = make(chan struct{})
	}
}

func (r *freezingRelay) release() {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	if r.held != nil {
		close(r.held)
		r.held = nil
	}
}

func (r *freezingRelay) holding() <-chan struct{} {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	return r.held
}

// copy forwards src to dst; fromPeer: the peer's bytes, which hold keeps.
func (r *freezingRelay) copy(dst, src net.Conn, fromPeer bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-r.frozen:
			return // what was read is swallowed, as a frozen process would
		default:
		}
		if held := r.holding(); fromPeer && held != nil {
			select {
			case <-held:
			case <-r.frozen:
				return
			}
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A peer that freezes after the connection is up (SIGSTOP, a partition)
// is declared dead by the liveness watch (HTTP/2 PINGs), as over QUIC,
// busy connection or quiet: within transport.VerdictBound of the freeze,
// or of the watch's last start-over if it found this process starved;
// the connection ends marked as an idle timeout,
// a request in flight fails marked ErrConnDead, the peer is reported
// unresponsive and is in back-off: Unavailable, and Get fails at once.
// The pool's back-off clock stands still from the freeze on, so "in
// back-off" does not depend on how long this process took to look (the
// first back-off is 100 ms; a loaded machine took longer).
func TestFrozenPeerDeclaredDeadWithinLivenessTimeout(t *testing.T) {
	testkit.CheckLeaks(t)
	for _, busy := range []bool{false, true} {
		t.Run(fmt.Sprintf("request in flight %v", busy), func(t *testing.T) {
			release := make(chan struct{})
			started := make(chan struct{}, 1)
			var clock testkit.StoppableClock
			p := newPairConfig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				started <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}), transport.Limits{}, Config{Now: clock.Now})
			t.Cleanup(func() { close(release) })
			failed := make(chan transport.PeerFailure, 4)
			p.pool.OnPeerFailure(func(f transport.PeerFailure) { failed <- f })
			relay := newFreezingRelay(t, p.ln.Addr().String())
			limits := p.pool.cfg.Limits
			pc, err := p.pool.Get(testkit.HangCtx(t), relay.Addr(), p.want)
			if err != nil {
				t.Fatal(err)
			}
			var reqErr chan error
			if busy {
				reqErr = make(chan error, 1)
				go func() {
					req, _ := http.NewRequest(http.MethodGet, "https://peer/hold", nil)
					resp, err := pc.RoundTrip(req)
					if err == nil {
						resp.Body.Close()
					}
					reqErr <- err
				}()
				<-started
			}
			restarted := testkit.LastChange(t, func() uint64 { return p.pool.LivenessStats().Starved })
			relay.freeze()
			clock.Stop()
			frozen := time.Now()
			took := declaredDead(t, pc, frozen)
			lv := p.pool.LivenessStats()
			from := testkit.Later(frozen, restarted())
			t.Logf("watch %+v", lv)
			if bound := transport.VerdictBound(limits.LivenessTimeout, limits.LivenessTimeout, lv.Deferred > 0); took-from.Sub(frozen) > bound {
				t.Fatalf("declared dead %v after the peer froze, %v after the watch last started over (watch %+v); want within %v (liveness timeout %v)",
					took, took-from.Sub(frozen), lv, bound, limits.LivenessTimeout)
			}
			if busy {
				if err := <-reqErr; !errors.Is(err, meshcode.ErrConnDead) {
					t.Fatalf("request in flight failed with %v; want it marked ErrConnDead", err)
				}
			}
			select {
			case f := <-failed:
				if f.Reason != transport.ReasonUnresponsive || f.Addr != relay.Addr() {
					t.Fatalf("reported %+v", f)
				}
			case <-time.After(time.Until(testkit.HangGuard(t))):
				t.Fatal("the frozen peer was not reported")
			}
			if n := p.pool.LivenessStats().Declared; n != 1 {
				t.Fatalf("%d connections declared dead; want 1", n)
			}
			if !p.pool.Unavailable(relay.Addr(), p.want) {
				t.Fatal("the frozen peer is not in back-off")
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := p.pool.Get(ctx, relay.Addr(), p.want); !errors.Is(err, meshcode.ErrPeerUnavailable) {
				t.Fatalf("Get of the frozen peer in its back-off: %v; want ErrPeerUnavailable at once", err)
			}
		})
	}
}

// declaredDead waits for pc to end, marked as an idle timeout (declared
// dead), and returns how long after since it ended.
func declaredDead(t *testing.T, pc *PeerConn, since time.Time) time.Duration {
	t.Helper()
	select {
	case <-pc.Context().Done():
	case <-time.After(time.Until(testkit.HangGuard(t))):
		t.Fatal("the connection to a silent peer never ended")
	}
	took := time.Since(since)
	cause := context.Cause(pc.Context())
	t.Logf("declared dead %v after the peer fell silent (liveness timeout %v): %v", took, pc.pool.cfg.Limits.LivenessTimeout, cause)
	// Declared by the liveness watch (liveness.go's message), not by
	// x/net/http2's health check behind it, at the idle timeout.
	if !errors.Is(cause, meshcode.ErrIdleTimeout) || !strings.Contains(cause.Error(), "liveness timeout") {
		t.Fatalf("connection ended with %v; want the liveness watch's verdict, marked ErrIdleTimeout", cause)
	}
	return took
}

// A stall of this process while the answer to a PING is due defers the
// watch's verdict until a poll without one, as over QUIC
// (transport.Silence.Verdict, transport.TestLivenessDefersVerdictWhileStalled):
// what a process starved in many short waits looks like to the watch
// (no poll late by a whole interval, no goroutine waiting that long, so
// it never starts over, yet the peer's PING ACK read over half the
// timeout late) is injected: the stall through the pool's hook, the late
// answer by the relay, which holds the peer's bytes until the verdict
// was deferred. Without the deferral the live peer was declared dead at
// the timeout. A peer that stays silent is still declared dead, by twice
// the timeout.
func TestLivenessDefersVerdictWhileStalled(t *testing.T) {
	testkit.CheckLeaks(t)
	for _, tt := range []struct {
		name   string
		answer bool // the peer's bytes get through once the verdict was deferred
	}{
		{"the answer comes after the timeout", true},
		{"the peer stays silent", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPair(t, http.NotFoundHandler())
			relay := newFreezingRelay(t, p.ln.Addr().String())
			limits := p.pool.cfg.Limits
			var stalled atomic.Bool
			// Just under a poll: long enough to defer, too short to
			// start the watch over.
			hook := func() time.Duration {
				if stalled.Load() {
					return limits.LivenessTimeout/4 - time.Millisecond
				}
				return 0
			}
			p.pool.stallHook.Store(&hook)
			pc, err := p.pool.Get(testkit.HangCtx(t), relay.Addr(), p.want)
			if err != nil {
				t.Fatal(err)
			}

			restarted := testkit.LastChange(t, func() uint64 { return p.pool.LivenessStats().Starved })
			stalled.Store(true)
			relay.hold()
			held := time.Now()
			testkit.Eventually(t, "a deferred verdict", func() bool { return p.pool.LivenessStats().Deferred > 0 || !pc.Alive() })
			if lv := p.pool.LivenessStats(); !pc.Alive() {
				t.Fatalf("declared dead %v after the answers stopped although this process stalled while they were due (watch %+v): %v",
					time.Since(held), lv, context.Cause(pc.Context()))
			}
			if tt.answer {
				read := pc.conn.lastRead.Load()
				relay.release()
				testkit.Eventually(t, "the peer's answer", func() bool { return pc.conn.lastRead.Load() != read || !pc.Alive() })
				stalled.Store(false)
				lv := p.pool.LivenessStats()
				t.Logf("answer read %v after the answers stopped; watch %+v", time.Since(held), lv)
				if !pc.Alive() || lv.Declared != 0 {
					t.Fatalf("a live peer declared dead (watch %+v): %v", lv, context.Cause(pc.Context()))
				}
				return
			}
			detected := declaredDead(t, pc, held)
			lv := p.pool.LivenessStats()
			t.Logf("watch %+v", lv)
			// Twice the timeout as the polls credit it, which a loaded
			// machine at most doubles (as over QUIC), from the freeze or
			// the watch's last start-over.
			from := testkit.Later(held, restarted())
			if bound := transport.VerdictBound(limits.LivenessTimeout, limits.LivenessTimeout, true); detected-from.Sub(held) > bound {
				t.Fatalf("a silent peer declared dead %v after the answers stopped, %v after the watch last started over (watch %+v); want within %v",
					detected, detected-from.Sub(held), lv, bound)
			}
			testkit.Eventually(t, "the dead connection counted", func() bool { return p.pool.LivenessStats().Declared == 1 })
		})
	}
}
