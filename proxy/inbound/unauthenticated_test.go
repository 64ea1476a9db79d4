package inbound

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// anonConn is a peer connection whose caller proved no identity, as the
// plain-TCP listener for non-mesh clients (issue 12) will hand the
// server: Serve hands the handlers it is given to the test.
type anonConn struct {
	ctx     context.Context
	cancel  context.CancelFunc
	handler chan http.Handler
	tunnels chan func(TunnelStream, string)
}

func (c *anonConn) Peer() identity.ID               { return identity.ID{} }
func (c *anonConn) LocalAddr() net.Addr             { return &net.TCPAddr{} }
func (c *anonConn) RemoteAddr() net.Addr            { return &net.TCPAddr{} }
func (c *anonConn) Context() context.Context        { return c.ctx }
func (c *anonConn) Expires() time.Time              { return time.Time{} }
func (c *anonConn) ActiveStreams() int64            { return 0 }
func (c *anonConn) GoAway(context.Context) error    { return nil }
func (c *anonConn) Reconnect(context.Context) error { return nil }
func (c *anonConn) Close(meshcode.ConnCode, string) { c.cancel() }
func (c *anonConn) Serve(h http.Handler, tunnel func(TunnelStream, string)) error {
	c.handler <- h
	c.tunnels <- tunnel
	<-c.ctx.Done()
	return nil
}

// oneConn is a Listener that hands out conn once.
type oneConn struct{ conn chan PeerConn }

func (l oneConn) Accept(ctx context.Context) (PeerConn, error) {
	select {
	case c := <-l.conn:
		return c, nil
	case <-ctx.Done():
		return nil, net.ErrClosed
	}
}

// A caller with no identity, through a whole inbound server with real
// apps: refused on routes whose rule needs an identity (HTTP/1.1 403,
// gRPC PERMISSION_DENIED, TCP reset before the app is dialled, whose
// accept counter stays at zero), admitted where the rule says
// "unauthenticated".
func TestUnauthenticatedCallers(t *testing.T) {
	testkit.CheckLeaks(t)
	var webHits atomic.Int64
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webHits.Add(1)
		if r.Header.Get("Quicmesh-Peer-Identity") != "" {
			t.Errorf("the app got an identity for a caller without one: %q", r.Header.Get("Quicmesh-Peer-Identity"))
		}
		io.WriteString(w, "hello")
	}))
	defer web.Close()
	var tcpAccepts atomic.Int64
	db, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	go func() {
		for {
			c, err := db.Accept()
			if err != nil {
				return
			}
			tcpAccepts.Add(1)
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	webAddr := strings.TrimPrefix(web.URL, "http://")
	pol, err := authz.Parse(authz.Spec{Routes: map[string][]string{
		"web-open": {authz.Unauthenticated}, "db-open": {authz.Unauthenticated},
		"web": {testPeer.String()}, // "db" and "grpc" keep the default
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	conns := make(chan PeerConn, 1)
	s, err := New(Config{Listener: oneConn{conns}, Logger: discard, Metrics: telemetry.New(reg), Options: Options{
		Routes: Routes{
			"web": "http://" + webAddr, "web-open": "http://" + webAddr, "grpc": "h2c://" + webAddr,
			"db": "tcp://" + db.Addr().String(), "db-open": "tcp://" + db.Addr().String(),
		},
		Authorization: pol,
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(ctx) }()
	defer func() { cancel(); <-served; s.Close() }()
	cctx, ccancel := context.WithCancel(context.Background())
	defer ccancel()
	conn := &anonConn{ctx: cctx, cancel: ccancel, handler: make(chan http.Handler, 1), tunnels: make(chan func(TunnelStream, string), 1)}
	conns <- conn
	h, tunnel := <-conn.handler, <-conn.tunnels

	request := func(route string, grpc bool) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "http://"+route+"/", strings.NewReader("x"))
		r.Header.Set("Quicmesh-Service", route)
		if grpc {
			r.Header.Set("Content-Type", "application/grpc")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	t.Run("HTTP/1.1 to an identity-only route: 403", func(t *testing.T) {
		w := request("web", false)
		if w.Code != http.StatusForbidden || !strings.Contains(w.Header().Get("Quicmesh-Proxy-Error"), `a caller with no identity is not authorized for route "web" (no_identity)`) {
			t.Fatalf("%d %q", w.Code, w.Header().Get("Quicmesh-Proxy-Error"))
		}
	})
	t.Run("gRPC to a default (all-authenticated) route: PERMISSION_DENIED", func(t *testing.T) {
		w := request("grpc", true)
		if w.Code != http.StatusOK || w.Header().Get("Grpc-Status") != "7" {
			t.Fatalf("%d grpc-status %q", w.Code, w.Header().Get("Grpc-Status"))
		}
	})
	if n := webHits.Load(); n != 0 {
		t.Fatalf("the app saw %d refused requests", n)
	}
	t.Run("HTTP/1.1 to an unauthenticated route: served", func(t *testing.T) {
		w := request("web-open", false)
		if w.Code != http.StatusOK || w.Body.String() != "hello" || webHits.Load() != 1 {
			t.Fatalf("%d %q, %d app hits", w.Code, w.Body, webHits.Load())
		}
	})
	openTunnel := func(route string) (*fakeTunnel, net.Conn, chan struct{}) {
		far, near := net.Pipe()
		str := &fakeTunnel{Conn: near}
		done := make(chan struct{})
		go func() { defer close(done); tunnel(str, route) }()
		return str, far, done
	}
	t.Run("TCP to a default route: reset before the app is dialled", func(t *testing.T) {
		str, far, done := openTunnel("db")
		defer far.Close()
		<-done
		if len(str.resets) != 1 || str.resets[0] != meshcode.Forbidden {
			t.Fatalf("resets %v, want [Forbidden]", str.resets)
		}
		if n := tcpAccepts.Load(); n != 0 {
			t.Fatalf("the app accepted %d connections for refused tunnels", n)
		}
	})
	t.Run("TCP to an unauthenticated route: spliced", func(t *testing.T) {
		_, far, done := openTunnel("db-open")
		far.SetDeadline(testkit.HangGuard(t))
		if _, err := far.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(far, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo %q, %v", buf, err)
		}
		far.Close()
		<-done
		if n := tcpAccepts.Load(); n != 1 {
			t.Fatalf("the app accepted %d connections, want 1", n)
		}
	})
	for _, series := range []struct {
		route, proto, decision, reason string
	}{
		{"web", "http", "deny", authz.ReasonNoIdentity},
		{"grpc", "grpc", "deny", authz.ReasonNoIdentity},
		{"web-open", "http", "allow", authz.ReasonUnauthenticated},
		{"db", "tcp", "deny", authz.ReasonNoIdentity},
		{"db-open", "tcp", "allow", authz.ReasonUnauthenticated},
	} {
		if got := decisions(t, reg, series.route, series.proto, series.decision, series.reason); got != 1 {
			t.Errorf("decisions %+v = %v, want 1", series, got)
		}
	}
}
