package transport_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// meshServer is a listening endpoint serving HTTP/3 requests and tunnels
// as the inbound proxy does, through transport.Server. Requests and
// tunnels are held open until the test ends; started reports each one.
// Other requests are answered at once, or after ?sleep=<duration>.
type meshServer struct {
	ep      *transport.Endpoint
	started chan struct{}
}

func startMeshServer(t *testing.T, prov identity.Provider, udp *net.UDPConn, limits transport.Limits) *meshServer {
	t.Helper()
	addr := "127.0.0.1:0"
	if udp != nil {
		addr = udp.LocalAddr().String()
	}
	ep, err := transport.Listen(addr, transport.Config{Identity: prov, PacketConn: udp, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	s := &meshServer{ep: ep, started: make(chan struct{}, 16)}
	hold := func(ctx context.Context) {
		s.started <- struct{}{}
		<-ctx.Done()
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			hold(r.Context())
		}
		// ?sleep=3s: an app that is slow to answer.
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
			}
		}
	})
	serveEach(t, ep, func(c *transport.ServerConn) {
		c.Serve(h, func(str *transport.Stream, _ string) { hold(str.Context()); str.Reset(meshcode.Reset) })
	})
	return s
}

// failures collects what the pool reports through OnPeerFailure.
func failures(p *transport.Pool) chan transport.PeerFailure {
	ch := make(chan transport.PeerFailure, 100)
	p.OnPeerFailure(func(f transport.PeerFailure) {
		select {
		case ch <- f:
		default:
		}
	})
	return ch
}

func get(t *testing.T, p *transport.Pool, addr string) *transport.PeerConn {
	t.Helper()
	pc, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// A peer that stops answering (frozen, or partitioned away: its datagrams
// dropped both ways) is declared dead by the liveness watch within the
// liveness timeout (1 s) and its polls, on a quiet connection as well as
// while a request or a tunnel is outstanding: the pooled
// connection is closed and dropped, what was in flight fails marked
// meshcode.ErrConnDead (not ErrNotProcessed: the peer may have served
// it), the peer is in back-off and reported as failed.
func TestUnresponsivePeerDeclaredDead(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	tests := []struct {
		name string
		// inFlight starts work on pc and returns a function that waits
		// for its error.
		inFlight func(t *testing.T, pc *transport.PeerConn, srv *meshServer) func() error
	}{
		{"quiet connection", nil},
		{"request in flight", func(t *testing.T, pc *transport.PeerConn, srv *meshServer) func() error {
			errc := make(chan error, 1)
			go func() {
				req, _ := http.NewRequest(http.MethodGet, "https://peer/hold", nil)
				resp, err := pc.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			<-srv.started
			return func() error { return <-errc }
		}},
		{"tunnel open", func(t *testing.T, pc *transport.PeerConn, srv *meshServer) func() error {
			str, err := pc.OpenTunnel(context.Background(), "svc:80")
			if err != nil {
				t.Fatal(err)
			}
			str.Write([]byte("x"))
			<-srv.started
			return func() error {
				_, err := str.Read(make([]byte, 1))
				return err
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
			relay := testkit.NewUDPRelay(t, srv.ep.Addr().String())
			var clock testkit.StoppableClock
			p := newPoolNow(t, ca, transport.Limits{}, clock.Now)
			failed := failures(p)
			limits := srv.ep.Limits()
			pc := get(t, p, relay.Addr())
			var wait func() error
			if tt.inFlight != nil {
				// As the proxy does: the liveness watch looks at
				// connections with work outstanding.
				defer pc.Begin()()
				wait = tt.inFlight(t, pc, srv)
			}

			restarted := testkit.LastChange(t, func() uint64 { return p.LivenessStats().Starved })
			relay.Blackhole(true)
			// The back-off starts from the freeze as far as the pool
			// knows, until the peer answers again below.
			clock.Stop()
			frozen := time.Now()
			select {
			case <-pc.Conn.Context().Done():
			case <-time.After(time.Until(testkit.HangGuard(t))):
				t.Fatalf("connection to a peer that stopped answering still open after %v (idle timeout %v)", time.Since(frozen), limits.IdleTimeout)
			}
			detected := time.Since(frozen)
			lv := p.LivenessStats()
			// The deadline the watch held the peer to: the liveness
			// timeout (the pool's limits are the defaults, as the
			// server's), or three probe timeouts if this loaded process
			// measured round trips that long.
			deadline := transport.LivenessDeadline(limits, pc.Conn.ConnectionStats())
			t.Logf("declared dead after %v (idle timeout %v, keep-alive %v, liveness timeout %v, deadline %v; watch: %+v)", detected, limits.IdleTimeout, limits.KeepAlive, limits.LivenessTimeout, deadline, lv)
			// The liveness watch finds it, busy or quiet, within
			// transport.VerdictBound of the freeze, or of its last
			// start-over if it found this process starved (the relay's
			// port stays open, so no port-unreachable probe speeds it
			// up).
			since := detected - testkit.Later(frozen, restarted()).Sub(frozen)
			if bound := transport.VerdictBound(limits.LivenessTimeout, deadline, lv.Deferred > 0); lv.Declared != 1 || lv.Unreachable != 0 || since > bound {
				t.Fatalf("declared dead after %v, %v after the watch last started over, by %+v; want the liveness watch within %v", detected, since, lv, bound)
			}
			if wait != nil {
				err := wait()
				if !errors.Is(err, meshcode.ErrConnDead) || errors.Is(err, meshcode.ErrNotProcessed) {
					t.Fatalf("work in flight failed with %v; want it marked ErrConnDead and not ErrNotProcessed", err)
				}
			}
			select {
			case f := <-failed:
				if f.Reason != transport.ReasonUnresponsive || f.Addr != relay.Addr() || f.Peer.String() != serverID || !errors.Is(f.Err, meshcode.ErrConnDead) {
					t.Fatalf("reported %+v", f)
				}
			case <-time.After(limits.IdleTimeout):
				t.Fatal("the dead peer was not reported")
			}
			if p.Len() != 0 {
				t.Fatal("the dead connection is still pooled")
			}
			// The peer is in back-off: callers fail at once instead of
			// waiting for a dial (a Get that waited would end with its
			// context, done before the call).
			done, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := p.Get(done, relay.Addr(), identity.MustParseID(serverID)); !errors.Is(err, transport.ErrPeerUnavailable) {
				t.Fatalf("Get after the peer died: %v; want ErrPeerUnavailable at once", err)
			}

			// The peer answers again: a fresh connection within the
			// back-off and one probe.
			clock.Resume()
			relay.Blackhole(false)
			back := time.Now()
			testkit.Eventually(t, "a fresh connection", func() bool {
				pc2, err := p.Get(context.Background(), relay.Addr(), identity.MustParseID(serverID))
				return err == nil && pc2 != pc && pc2.Alive()
			})
			t.Logf("reconnected %v after the peer answered again", time.Since(back))
		})
	}
}

// newPoolNow is newPool with the back-off clock now.
func newPoolNow(t *testing.T, ca *identity.CA, limits transport.Limits, now func() time.Time) *transport.Pool {
	t.Helper()
	ep, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, clientID), Limits: limits, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	p := transport.NewPool(ep)
	t.Cleanup(func() { p.Close(); ep.Close() })
	return p
}

// A peer that dies without a word (kill -9: its socket vanishes, no
// CONNECTION_CLOSE) fails what is sent to it within two polls of the
// liveness watch (its port-unreachable probe hears the host's ICMP
// answer) and dials to it within a round trip (the same probe, reason
// "unreachable"), and later requests at once.
// Restarted on the same address it is reached again at once: with the
// same key its stateless reset ends the old connection within a round
// trip; with a new key (the reset cannot be authenticated) within the
// liveness timeout.
func TestKilledPeerFailsFastAndIsRedialled(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	for _, tt := range []struct {
		name    string
		newKey  bool
		restart bool // at once, before the old connection was declared dead
	}{
		{"stays down, then restarts with a new key", true, false},
		{"restarts at once with the same key", false, true},
		{"restarts at once with a new key", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prov := identitytest.Provider(t, ca, serverID)
			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			addr := udp.LocalAddr().String()
			srv := startMeshServer(t, prov, udp, transport.Limits{})
			limits := srv.ep.Limits()
			p := newPool(t, ca, transport.Limits{})
			pc := get(t, p, addr)

			restarted := testkit.LastChange(t, func() uint64 { return p.LivenessStats().Starved })
			// kill -9: the socket goes first, so nothing is said.
			udp.Close()
			srv.ep.Close()
			killed := time.Now()
			restart := func() {
				if tt.newKey {
					prov = identitytest.Provider(t, ca, serverID)
				}
				ua, err := net.ResolveUDPAddr("udp", addr)
				if err != nil {
					t.Fatal(err)
				}
				udp, err := net.ListenUDP("udp", ua)
				if err != nil {
					t.Fatal(err)
				}
				startMeshServer(t, prov, udp, transport.Limits{})
			}
			if tt.restart {
				restart()
			}

			req, _ := http.NewRequest(http.MethodGet, "https://peer/", nil)
			end := pc.Begin()
			_, err = pc.RoundTrip(req)
			end()
			if !errors.Is(err, meshcode.ErrConnDead) {
				t.Fatalf("request to the killed peer: %v; want it marked ErrConnDead", err)
			}
			// Within the liveness watch's verdict bound of the kill, or
			// of its last start-over if it found this process starved.
			lv := p.LivenessStats()
			deadline := transport.LivenessDeadline(limits, pc.Conn.ConnectionStats())
			if d := time.Since(killed); d-testkit.Later(killed, restarted()).Sub(killed) > transport.VerdictBound(limits.LivenessTimeout, deadline, lv.Deferred > 0) {
				t.Fatalf("request to the killed peer failed after %v; liveness timeout %v, deadline %v, verdict bound %v from the watch's last start-over (watch: %+v)",
					d, limits.LivenessTimeout, deadline, transport.VerdictBound(limits.LivenessTimeout, deadline, lv.Deferred > 0), lv)
			}
			// Its port stays closed: the probe after the first silent
			// poll finds it (two polls, 500 ms with the defaults, at
			// most doubled by late polls, and a round trip), not the
			// timeout.
			if d := time.Since(killed); !tt.restart && (lv.Unreachable != 1 || lv.Starved == 0 && d > limits.LivenessTimeout) {
				t.Fatalf("request to the killed peer failed after %v (watch: %+v); want the port-unreachable probe within %v", d, lv, limits.LivenessTimeout)
			}
			t.Logf("request on the old connection failed %v after the kill: %v", time.Since(killed), err)

			if !tt.restart {
				testkit.Eventually(t, "the dead connection dropped", func() bool { return p.Len() == 0 })
				// Nobody answers: every Get fails within the connect
				// timeout, most at once.
				for i := range 5 {
					start := time.Now()
					_, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
					if !errors.Is(err, transport.ErrPeerUnavailable) {
						t.Fatalf("Get %d of a dead peer: %v", i, err)
					}
					if d := time.Since(start); d > limits.DialTimeout+limits.DialTimeout/2 {
						t.Fatalf("Get %d of a dead peer took %v; connect timeout %v", i, d, limits.DialTimeout)
					}
				}
				// Once the back-off is over, a Get dials: its probe
				// hears that nothing listens, long before the
				// connect timeout.
				testkit.Eventually(t, "the back-off over", func() bool { return !p.Unavailable(addr, identity.MustParseID(serverID)) })
				start := time.Now()
				_, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
				if d := time.Since(start); transport.HandshakeReason(err) != transport.ReasonUnreachable || d > limits.DialTimeout/2 {
					t.Fatalf("dial to a dead peer: %v after %v (reason %q); want reason %q well within the connect timeout %v", err, d, transport.HandshakeReason(err), transport.ReasonUnreachable, limits.DialTimeout)
				}
				t.Logf("dial to the dead peer failed after %v: %v", time.Since(start), err)
				restart()
			}
			back := time.Now()
			testkit.Eventually(t, "a request served by the restarted peer", func() bool {
				pc2, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
				if err != nil {
					return false
				}
				resp, err := pc2.RoundTrip(req.Clone(context.Background()))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
			took := time.Since(back)
			t.Logf("traffic resumed %v after the restart", took)
			if !tt.restart && took > limits.IdleTimeout {
				t.Fatalf("traffic resumed %v after the peer was back; want within %v", took, limits.IdleTimeout)
			}
		})
	}
}

// A draining listener refuses new handshakes at once (CONNECTION_REFUSED):
// the dialling pool reports the peer unavailable within a round trip,
// not after its connect timeout, and established connections keep
// working.
func TestDrainingPeerRefusesNewConnections(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := startMeshServer(t, identitytest.Provider(t, ca, serverID), nil, transport.Limits{})
	addr := srv.ep.Addr().String()
	// A long connect timeout: a drain that ignored the handshake would
	// keep the dial waiting for all of it.
	limits := transport.Limits{DialTimeout: 5 * time.Second, HandshakeTimeout: 10 * time.Second}
	established := newPool(t, ca, limits)
	pc := get(t, established, addr)

	if err := srv.ep.StopListening(); err != nil {
		t.Fatal(err)
	}
	p := newPool(t, ca, limits)
	failed := failures(p)
	start := time.Now()
	_, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	took := time.Since(start)
	if !errors.Is(err, transport.ErrPeerUnavailable) || transport.HandshakeReason(err) != transport.ReasonRefused {
		t.Fatalf("dial to a draining peer: %v (reason %q); want ErrPeerUnavailable, reason %q", err, transport.HandshakeReason(err), transport.ReasonRefused)
	}
	if took > limits.DialTimeout/5 {
		t.Fatalf("the refusal took %v; connect timeout %v", took, limits.DialTimeout)
	}
	t.Logf("dial refused after %v", took)
	if f := <-failed; f.Reason != transport.ReasonRefused {
		t.Fatalf("reported %+v", f)
	}
	if !p.Unavailable(addr, identity.MustParseID(serverID)) {
		t.Fatal("a refusing peer is not in back-off")
	}

	str, err := pc.OpenTunnel(context.Background(), "svc:80")
	if err != nil {
		t.Fatalf("established connection during the drain: %v", err)
	}
	str.Write([]byte("x"))
	<-srv.started
	if !pc.Alive() {
		t.Fatal("the drain closed an established connection")
	}
}
