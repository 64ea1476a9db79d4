package transport_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// drainPair is a transport.Server that answers HTTP/3 requests with 204
// and echoes tunnels, and a pool connected to it.
type drainPair struct {
	pool *transport.Pool
	addr string
	id   identity.ID
	pc   *transport.PeerConn
	sc   *transport.ServerConn
}

func newDrainPair(t *testing.T, oldPool bool) *drainPair {
	t.Helper()
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	ep, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, serverID)})
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *transport.ServerConn, 4)
	serveEach(t, ep, func(c *transport.ServerConn) {
		conns <- c
		c.Serve(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }),
			func(str *transport.Stream, _ string) {
				io.Copy(str, str)
				str.CloseWrite()
			})
	})
	p := newPool(t, ca, transport.Limits{})
	p.PlayOldDrain(oldPool)
	d := &drainPair{pool: p, addr: ep.Addr().String(), id: identity.MustParseID(serverID)}
	if d.pc, err = p.Get(context.Background(), d.addr, d.id); err != nil {
		t.Fatal(err)
	}
	d.sc = <-conns
	return d
}

func (d *drainPair) get(t *testing.T) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+d.addr+"/", nil)
	resp, err := d.pc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// After a reconnect the pool dials a fresh connection for new work,
// finishes the request in flight on the old one (until its response body
// is closed), and only then says it has finished; a request on the old
// connection after that is refused before anything is sent, so the proxy
// sends it elsewhere.
func TestReconnectFinishesInFlightWorkThenSaysFinished(t *testing.T) {
	d := newDrainPair(t, false)
	testkit.Eventually(t, "the server to hear that the pool takes part in the drain handshake", d.sc.DrainAware)
	var bodies []io.Closer
	for _, body := range []io.Reader{nil, strings.NewReader("with a body")} { // roundTripBodyless, quic-go's RoundTrip
		req, _ := http.NewRequest(http.MethodPost, "https://"+d.addr+"/", body)
		resp, err := d.pc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}
	if err := d.sc.Reconnect(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the pool to dial a fresh connection", func() bool {
		pc, err := d.pool.Get(context.Background(), d.addr, d.id)
		return err == nil && pc != d.pc
	})
	d.get(t) // on the retired connection: it serves what comes
	select {
	case <-d.sc.Finished():
		t.Fatal("the pool said it finished with two response bodies open")
	default:
	}
	bodies[0].Close()
	select {
	case <-d.sc.Finished():
		t.Fatal("the pool said it finished with a response body open")
	default:
	}
	bodies[1].Close()
	<-d.sc.Finished()
	req, _ := http.NewRequest(http.MethodGet, "https://"+d.addr+"/", nil)
	if _, err := d.pc.RoundTrip(req); !errors.Is(err, meshcode.ErrNotProcessed) {
		t.Fatalf("request on the finished connection: %v, want it marked unprocessed", err)
	}
}

// A tunnel counts as work on its connection from its open until both of
// its directions have ended, whether or not its owner called Begin.
func TestTunnelHoldsTheDrainUntilBothDirectionsEnd(t *testing.T) {
	d := newDrainPair(t, false)
	testkit.Eventually(t, "the server to hear that the pool takes part in the drain handshake", d.sc.DrainAware)
	str, err := d.pc.OpenTunnel(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.sc.GoAway(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the pool to hear the GOAWAY", func() bool { return d.pool.Unavailable(d.addr, d.id) })
	if _, err := str.Write([]byte("after goaway")); err != nil {
		t.Fatal(err)
	}
	str.CloseWrite()
	select {
	case <-d.sc.Finished():
		t.Fatal("the pool said it finished before the tunnel's receive direction ended")
	default:
	}
	got, err := io.ReadAll(str)
	if err != nil || string(got) != "after goaway" {
		t.Fatalf("echo %q %v", got, err)
	}
	<-d.sc.Finished()
}

// A pool from before the handshake never says it takes part: the server
// drains its connections with the quiet period.
func TestOldPoolIsNotDrainAware(t *testing.T) {
	d := newDrainPair(t, true)
	d.get(t) // the server has read everything the pool sent first
	if d.sc.DrainAware() {
		t.Fatal("a pool from before the handshake taken as drain-aware")
	}
}
