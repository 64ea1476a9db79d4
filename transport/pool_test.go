package transport_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

const (
	serverID = "spiffe://t.local/server"
	clientID = "spiffe://t.local/client"
)

// server accepts connections and counts them until the test ends.
type server struct {
	ep       *transport.Endpoint
	accepted atomic.Int64
	conns    chan *quic.Conn
}

func startServer(t *testing.T, ca *identity.CA, addr string) *server {
	t.Helper()
	ep, err := transport.Listen(addr, transport.Config{Identity: identitytest.Provider(t, ca, serverID)})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ep: ep, conns: make(chan *quic.Conn, 100)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ep.Accept(context.Background())
			if err != nil {
				return
			}
			serveHTTP3(t, c)
			s.accepted.Add(1)
			s.conns <- c
		}
	}()
	t.Cleanup(func() { ep.Close(); wg.Wait() })
	return s
}

// serveHTTP3 takes an accepted connection into service as the inbound
// proxy does: its HTTP/3 SETTINGS tell the dialling pool it was accepted.
// It fails only if the client already closed the connection, which some
// tests do; a pool still waiting would see that as a failed dial.
func serveHTTP3(_ *testing.T, c *quic.Conn) {
	(&http3.Server{}).NewRawServerConn(c)
}

// waitAccepted lets the server's accept loop catch up with handshakes the
// client already sees as complete, then reports the count.
func (s *server) waitAccepted(t *testing.T) int64 {
	deadline := time.Now().Add(2 * time.Second)
	for s.accepted.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return s.accepted.Load()
}

func newPool(t testing.TB, ca *identity.CA, limits transport.Limits) *transport.Pool {
	t.Helper()
	ep, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, clientID), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	p := transport.NewPool(ep)
	t.Cleanup(func() { p.Close(); ep.Close() })
	return p
}

func TestPoolCoalescesConcurrentDials(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := startServer(t, ca, "127.0.0.1:0")
	p := newPool(t, ca, transport.Limits{})
	id := identity.MustParseID(serverID)
	const n = 50
	conns := make([]*transport.PeerConn, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, err := p.Get(context.Background(), srv.ep.Addr().String(), id)
			if err != nil {
				t.Error(err)
			}
			conns[i] = pc
		}()
	}
	wg.Wait()
	for i := range conns {
		if conns[i] != conns[0] {
			t.Fatalf("caller %d got a different connection", i)
		}
	}
	if got := srv.waitAccepted(t); got != 1 {
		t.Fatalf("server accepted %d connections, want 1", got)
	}
	if p.Len() != 1 {
		t.Fatalf("pool holds %d connections", p.Len())
	}
}

func TestPoolBackoffAndRecovery(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	// Reserve a UDP port with nobody serving QUIC on it.
	hole, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := hole.LocalAddr().String()
	hole.Close()
	p := newPool(t, ca, transport.Limits{HandshakeTimeout: 300 * time.Millisecond})
	id := identity.MustParseID(serverID)

	start := time.Now()
	_, err = p.Get(context.Background(), addr, id)
	if !errors.Is(err, transport.ErrPeerUnavailable) {
		t.Fatalf("dial to a dead peer: %v, want ErrPeerUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("dial failure took %v, want about the handshake timeout", d)
	}
	// Within the back-off, failure is immediate and no dial is made.
	start = time.Now()
	_, err = p.Get(context.Background(), addr, id)
	if !errors.Is(err, transport.ErrPeerUnavailable) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("second Get: %v after %v; want an immediate ErrPeerUnavailable", err, time.Since(start))
	}
	if !p.Unavailable(addr, id) {
		t.Fatal("Unavailable = false during back-off")
	}
	// The peer comes up; after the back-off a dial succeeds.
	srv := startServer(t, ca, addr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		pc, err := p.Get(context.Background(), addr, id)
		if err == nil {
			if !pc.Alive() {
				t.Fatal("dead connection returned")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := srv.waitAccepted(t); got != 1 {
		t.Fatalf("accepted %d", got)
	}
}

func TestPoolHonoursGoAway(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := startServer(t, ca, "127.0.0.1:0")
	p := newPool(t, ca, transport.Limits{})
	id := identity.MustParseID(serverID)
	addr := srv.ep.Addr().String()
	pc, err := p.Get(context.Background(), addr, id)
	if err != nil {
		t.Fatal(err)
	}
	sconn := <-srv.conns
	if err := transport.SendGoAway(context.Background(), sconn); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for !p.Unavailable(addr, id) {
		if time.Now().After(deadline) {
			t.Fatal("pool did not mark the draining peer unavailable")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// In-flight work on the old connection is unaffected.
	if !pc.Alive() {
		t.Fatal("GOAWAY closed the connection; in-flight work would be lost")
	}
}

func TestTunnelHeaderRoutedAndResetMapped(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := startServer(t, ca, "127.0.0.1:0")
	p := newPool(t, ca, transport.Limits{})
	pc, err := p.Get(context.Background(), srv.ep.Addr().String(), identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	str, err := pc.OpenTunnel(context.Background(), "svc:80")
	if err != nil {
		t.Fatal(err)
	}
	str.Write([]byte("x"))
	sconn := <-srv.conns
	sstr, err := sconn.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sstr.CancelWrite(transport.CodeUnknownTarget)
	sstr.CancelRead(transport.CodeUnknownTarget)
	_, err = str.Read(make([]byte, 1))
	if se, ok := errors.AsType[*meshcode.StreamError](err); !ok || se.Code != meshcode.UnknownTarget || !se.Remote {
		t.Fatalf("read after the peer reset the tunnel: %v, want a remote meshcode.StreamError with UnknownTarget", err)
	}
}

// A peer that dies without closing its connections and comes back on the
// same address with the same identity resets them with a stateless reset:
// the pool notices within a round trip, not after the idle timeout.
func TestCrashedPeerDetectedByStatelessReset(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	prov := identitytest.Provider(t, ca, serverID)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := udp.LocalAddr().String()
	// Idle timeouts of a minute on both sides: only the stateless reset
	// can end the connection within the test's deadline.
	slow := transport.Limits{IdleTimeout: time.Minute}
	ep, err := transport.Listen(addr, transport.Config{Identity: prov, PacketConn: udp, Limits: slow})
	if err != nil {
		t.Fatal(err)
	}
	acceptHTTP3 := func(ep *transport.Endpoint) {
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := ep.Accept(context.Background())
				if err != nil {
					return
				}
				serveHTTP3(t, c)
			}
		})
		t.Cleanup(func() { ep.Close(); wg.Wait() })
	}
	acceptHTTP3(ep)
	p := newPool(t, ca, slow)
	id := identity.MustParseID(serverID)
	// Get returns once the server's HTTP/3 SETTINGS arrived. The server
	// sent them after its HANDSHAKE_DONE, so the handshake is confirmed
	// and the client sends only short-header packets, the kind a
	// stateless reset answers.
	pc, err := p.Get(context.Background(), addr, id)
	if err != nil {
		t.Fatal(err)
	}
	// Crash: the socket vanishes, no CONNECTION_CLOSE is sent.
	udp.Close()
	ep.Close()
	// Restart on the same address with the same identity (same key).
	ep2, err := transport.Listen(addr, transport.Config{Identity: prov, Limits: slow})
	if err != nil {
		t.Fatal(err)
	}
	acceptHTTP3(ep2)
	start := time.Now()
	str, err := pc.Conn.OpenStream()
	if err == nil {
		// A peer answers only packets longer than the smallest stateless
		// reset it could send (quic-go: 42 bytes, MinStatelessResetSize),
		// so that two endpoints cannot reset each other in a loop. With
		// 4-byte connection IDs a 4-byte write makes a packet of about 30
		// bytes, answered only when other frames happened to share it
		// (5 of 30 runs failed with -race); 64 bytes of stream data make
		// it large enough whatever else it carries.
		str.Write(make([]byte, 64))
	}
	select {
	case <-pc.Conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection to the crashed peer still open after 5 s (idle timeout is 1 min)")
	}
	t.Logf("stale connection reset after %v", time.Since(start))
	fresh, err := p.Get(context.Background(), addr, id)
	if err != nil || fresh == pc {
		t.Fatalf("no fresh connection after the reset: %v", err)
	}
}

// A rolling restart: the peer drains, its port closes (a dial finds it
// down: a silent failure), it comes back on the same address. While the
// back-off after those failures holds (the clock is frozen), a Get
// probes the restarted peer at once and gets a connection: a request
// with no other endpoint to go to is not failed with "no endpoint". A
// peer that went away without a drain keeps failing fast during its
// back-off (the fail-fast rule for dead peers), and a drained peer's
// failures while it is down are marked meshcode.ErrPeerRestarting.
func TestRestartedPeerProbedDuringBackoff(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	id := identity.MustParseID(serverID)
	for _, tt := range []struct {
		name    string
		drained bool // the peer said goodbye before it went
	}{
		{"drained, then restarted", true},
		{"gone without a drain, then restarted", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, ca, "127.0.0.1:0")
			addr := srv.ep.Addr().String()
			// Frozen: no back-off expires during the test.
			now := time.Now()
			ep, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, clientID), Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			p := transport.NewPool(ep)
			t.Cleanup(func() { p.Close(); ep.Close() })
			first, err := p.Get(context.Background(), addr, id)
			if err != nil {
				t.Fatal(err)
			}
			sconn := <-srv.conns
			if tt.drained {
				if err := transport.SendGoAway(context.Background(), sconn); err != nil {
					t.Fatal(err)
				}
				testkit.Eventually(t, "the pool to see the drain", func() bool { return p.Unavailable(addr, id) })
				sconn.CloseWithError(transport.ConnCodeShutdown, "drained")
			} else {
				// Not a drain's code: the pool forgets the connection
				// without a back-off.
				sconn.CloseWithError(0, "gone")
			}
			<-first.Conn.Context().Done()
			srv.ep.Close()
			// Down: the dial fails (port unreachable, or no answer).
			var downErr error
			testkit.Eventually(t, "a dial to find the peer down", func() bool {
				_, downErr = p.Get(context.Background(), addr, id)
				if downErr == nil {
					t.Fatal("Get succeeded with the peer down")
				}
				return transport.HandshakeReason(downErr) != ""
			})
			if !p.Unavailable(addr, id) {
				t.Fatal("Unavailable = false in the back-off after a failed dial")
			}
			startServer(t, ca, addr)
			pc, err := p.Get(context.Background(), addr, id)
			switch {
			case tt.drained && err != nil:
				t.Fatalf("Get after the drained peer restarted: %v; want a probe that finds it", err)
			case tt.drained && !pc.Alive():
				t.Fatal("Get returned a dead connection")
			case !tt.drained && !errors.Is(err, transport.ErrPeerUnavailable):
				t.Fatalf("Get during the back-off of a peer gone without a drain: %v, %v; want ErrPeerUnavailable at once", pc, err)
			}
			if errors.Is(downErr, meshcode.ErrPeerRestarting) != tt.drained {
				t.Fatalf("Get with the peer down: %v; want it marked meshcode.ErrPeerRestarting: %v", downErr, tt.drained)
			}
		})
	}
}
