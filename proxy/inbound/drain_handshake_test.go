package inbound

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The drain handshake between the QUIC transport's pool (the dialing
// side) and this server's drain (docs/design.md, "Draining and GOAWAY"),
// end to end over loopback: an inbound server in front of a TCP echo app,
// and a bare pool as the peer sidecar, so that a test can hold a stream
// where the outbound proxy would not.

const (
	drainServerID = "spiffe://t.local/server"
	drainClientID = "spiffe://t.local/client"
)

// quicListener is the transport's server as a Listener (as the sidecar
// wires it), handing the test each transport connection too.
type quicListener struct {
	srv   *transport.Server
	conns chan *transport.ServerConn
}

func (l quicListener) Accept(ctx context.Context) (PeerConn, error) {
	c, err := l.srv.Accept(ctx)
	if err != nil {
		return nil, err
	}
	l.conns <- c
	return quicConn{c}, nil
}

type quicConn struct{ *transport.ServerConn }

func (c quicConn) Serve(h http.Handler, tunnel func(TunnelStream, string)) error {
	return c.ServerConn.Serve(h, func(str *transport.Stream, target string) { tunnel(str, target) })
}

// drainRig is an inbound server with a tunnel route "echo", and a pool
// connected to it through a relay that can drop every packet.
type drainRig struct {
	srv   *Server
	relay *testkit.UDPRelay
	pool  *transport.Pool
	addr  string
	id    identity.ID
	pc    *transport.PeerConn
	sc    *transport.ServerConn // the server's side of pc
	serve chan error
}

// newDrainRig starts the rig; oldPeer makes the pool one from before the
// drain handshake.
func newDrainRig(t *testing.T, oldPeer bool) *drainRig {
	t.Helper()
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	app, err := echo.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	// Packets are dropped for as long as the drain's quiet period takes,
	// however long that is on a loaded machine: neither side may give
	// the other up for silence meanwhile.
	patient := transport.Limits{IdleTimeout: time.Until(testkit.HangGuard(t)), LivenessTimeout: time.Until(testkit.HangGuard(t))}
	ep, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, drainServerID), Limits: patient})
	if err != nil {
		t.Fatal(err)
	}
	ln := quicListener{srv: transport.NewServer(ep, transport.ServerConfig{}), conns: make(chan *transport.ServerConn, 4)}
	srv, err := New(Config{Listener: ln, Options: Options{Routes: Routes{"echo": "tcp://" + app.Addr().String()}}})
	if err != nil {
		t.Fatal(err)
	}
	r := &drainRig{srv: srv, relay: testkit.NewUDPRelay(t, ep.Addr().String()), id: identity.MustParseID(drainServerID), serve: make(chan error, 1)}
	r.addr = r.relay.Addr()
	go func() { r.serve <- srv.Serve(context.Background()) }()
	t.Cleanup(func() {
		ep.Close()
		srv.Close()
		<-r.serve
	})

	dialer, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, drainClientID), Limits: patient})
	if err != nil {
		t.Fatal(err)
	}
	r.pool = transport.NewPool(dialer)
	r.pool.PlayOldDrain(oldPeer)
	t.Cleanup(func() { r.pool.Close(); dialer.Close() })
	if r.pc, err = r.pool.Get(context.Background(), r.addr, r.id); err != nil {
		t.Fatal(err)
	}
	r.sc = <-ln.conns
	if !oldPeer {
		// Said when the connection was taken into service.
		testkit.Eventually(t, "the server to hear that the peer takes part in the drain handshake", r.sc.DrainAware)
	}
	// The connection carries a tunnel end to end before the drain.
	str, err := r.pc.OpenTunnel(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	if got := echoed(t, str, "before"); got != "before" {
		t.Fatalf("tunnel before the drain echoed %q", got)
	}
	return r
}

// echoed sends msg on a tunnel to the echo app, ends it and returns what
// came back.
func echoed(t *testing.T, str *transport.Stream, msg string) string {
	t.Helper()
	if _, err := str.Write([]byte(msg)); err != nil {
		t.Fatalf("writing to the tunnel: %v", err)
	}
	str.CloseWrite()
	got, err := io.ReadAll(str)
	if err != nil {
		t.Fatalf("reading the tunnel: %v (after %q)", err, got)
	}
	return string(got)
}

// shutdown drains the server with grace as its grace period, in the
// background.
func (r *drainRig) shutdown(grace time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		done <- r.srv.Shutdown(ctx)
	}()
	return done
}

// waitGoAway waits until the pool has heard the GOAWAY.
func (r *drainRig) waitGoAway(t *testing.T) {
	t.Helper()
	testkit.Eventually(t, "the pool to hear the GOAWAY", func() bool { return r.pool.Unavailable(r.addr, r.id) })
}

// closedBy waits until the server has closed the connection and returns
// the code it closed it with. (It is the server's side that is asked: a
// client whose packets were dropped may learn of the close only from a
// stateless reset.)
func (r *drainRig) closedBy(t *testing.T) meshcode.ConnCode {
	t.Helper()
	<-r.sc.Context().Done()
	ae, ok := errors.AsType[*quic.ApplicationError](context.Cause(r.sc.Context()))
	if !ok || ae.Remote {
		t.Fatalf("connection closed by %v, want the server to close it", context.Cause(r.sc.Context()))
	}
	return meshcode.ConnCode(ae.ErrorCode)
}

// A tunnel the peer opened before it heard the GOAWAY, whose packets
// reach the server only after a quiet period has passed (here: all are
// lost until then), is served: the server waits for the peer to say it
// has finished, not for quiet. Packets are dropped from before the tunnel
// is opened until the server's drain has seen the connection quiet for
// drainQuiet (its hook fires then) or, for a peer from before the
// handshake, has closed it as quiet: that row shows the loss the quiet
// rule had to accept, and that such peers are still drained by it.
func TestDrainServesStreamThatArrivesAfterTheQuietPeriod(t *testing.T) {
	for _, tc := range []struct {
		name    string
		oldPeer bool
	}{
		{"drain-aware peer: served", false},
		{"peer without the handshake: closed by the quiet rule, stream lost", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newDrainRig(t, tc.oldPeer)
			quiet := make(chan struct{})
			var once sync.Once
			hook := func() { once.Do(func() { close(quiet) }) }
			quietHook.Store(&hook)
			t.Cleanup(func() { quietHook.Store(nil) })

			r.relay.Blackhole(true)
			str, err := r.pc.OpenTunnel(context.Background(), "echo")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := str.Write([]byte("late")); err != nil {
				t.Fatal(err)
			}
			str.CloseWrite()
			done := r.shutdown(time.Until(testkit.HangGuard(t)))
			select {
			case <-quiet:
			case <-r.sc.Context().Done():
			}
			r.relay.Blackhole(false)
			got, err := io.ReadAll(str)
			if tc.oldPeer {
				if err == nil {
					t.Fatalf("the late tunnel was served (%q): the quiet rule no longer closed the connection", got)
				}
				if code := r.closedBy(t); code != meshcode.ConnShutdown {
					t.Fatalf("closed with %#x, want %#x", code, meshcode.ConnShutdown)
				}
				if err := <-done; err != nil {
					t.Fatalf("Shutdown: %v, want the quiet rule to close the connection within the grace period", err)
				}
				return
			}
			if err != nil || string(got) != "late" {
				t.Fatalf("late tunnel: read %q %v; want it served", got, err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Shutdown: %v, want the drain to finish when the peer's work did", err)
			}
			if code := r.closedBy(t); code != meshcode.ConnShutdown {
				t.Fatalf("closed with %#x, want %#x", code, meshcode.ConnShutdown)
			}
		})
	}
}

// A tunnel open when the drain starts goes on carrying data after the
// GOAWAY; when it ends (and with it the peer's last work on the
// connection), the peer says so and the server closes the connection at
// once, not when the grace period (here, the test's whole time) ends.
func TestDrainEndsWhenThePeersTunnelEnds(t *testing.T) {
	r := newDrainRig(t, false)
	str, err := r.pc.OpenTunnel(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := str.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(str, buf[:len(msg)]); err != nil || string(buf[:len(msg)]) != msg {
			t.Fatalf("echo of %q: %q %v", msg, buf[:len(msg)], err)
		}
	}
	roundTrip("one")
	done := r.shutdown(time.Until(testkit.HangGuard(t)))
	r.waitGoAway(t)
	roundTrip("two")
	select {
	case <-r.sc.Finished():
		t.Fatal("the peer said it finished with a tunnel open")
	case err := <-done:
		t.Fatalf("drain ended with a tunnel open: %v", err)
	default:
	}
	if got := echoed(t, str, "three"); got != "three" {
		t.Fatalf("last echo %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v, want it to end when the tunnel did", err)
	}
	if code := r.closedBy(t); code != meshcode.ConnShutdown {
		t.Fatalf("closed with %#x, want %#x", code, meshcode.ConnShutdown)
	}
	// A tunnel open on the drained connection is refused before anything
	// is sent: the proxy opens it elsewhere.
	if _, err := r.pc.OpenTunnel(context.Background(), "echo"); !errors.Is(err, meshcode.ErrNotProcessed) {
		t.Fatalf("tunnel on the drained connection: %v, want it marked unprocessed", err)
	}
}

// A peer that takes part in the handshake but keeps work open forever is
// cut off when the grace period ends.
func TestDrainGracePeriodBoundsAPeerThatNeverFinishes(t *testing.T) {
	r := newDrainRig(t, false)
	str, err := r.pc.OpenTunnel(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	grace := 300 * time.Millisecond
	done := r.shutdown(grace)
	r.waitGoAway(t)
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the grace period to end it", err)
	}
	if code := r.closedBy(t); code != meshcode.ConnShutdown {
		t.Fatalf("closed with %#x, want %#x", code, meshcode.ConnShutdown)
	}
	if _, err := io.ReadAll(str); err == nil {
		t.Fatal("tunnel ended cleanly, want it cut off with its connection")
	}
}
