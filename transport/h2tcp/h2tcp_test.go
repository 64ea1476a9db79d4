package h2tcp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const (
	serverID = "spiffe://test.local/server"
	clientID = "spiffe://test.local/client"
)

// pairDialTimeout is the dial and handshake timeout of a pair's pool
// and listener unless the test sets one.
const pairDialTimeout = 10 * time.Second

// pair is a listener serving with handlers the test sets and a pool
// dialling it.
type pair struct {
	ln     *Listener
	pool   *Pool
	want   identity.ID
	tunnel chan tunnelCall
	conns  chan *ServerConn
}

type tunnelCall struct {
	str    *ServerStream
	target string
	done   chan struct{} // closed by the test: the handler may return
}

func newPair(t testing.TB, h http.Handler) *pair {
	t.Helper()
	return newPairLimits(t, h, transport.Limits{})
}

// newPairLimits is newPair with the listener's limits.
func newPairLimits(t testing.TB, h http.Handler, lim transport.Limits) *pair {
	t.Helper()
	return newPairBoth(t, h, lim, transport.Limits{})
}

// newPairBoth is newPair with the listener's and the pool's limits.
func newPairBoth(t testing.TB, h http.Handler, lim, poolLim transport.Limits) *pair {
	t.Helper()
	return newPairConfig(t, h, lim, Config{Limits: poolLim})
}

// newPairConfig is newPair with the listener's limits and the pool's
// config (its Identity is the test's).
func newPairConfig(t testing.TB, h http.Handler, lim transport.Limits, poolCfg Config) *pair {
	t.Helper()
	// Dial and handshake timeouts are not what the tests of a pair are
	// about (frozen_test.go's dial test sets its own): with -race, two
	// CPU hogs and the package's tests in parallel, the default 1 s dial
	// timeout once failed a dial to this listener next door
	// (TestGoAwayDrainsPeer, "dial tcp: i/o timeout"; the kernel
	// completes a loopback connect at once, so this process had not run).
	for _, l := range []*transport.Limits{&lim, &poolCfg.Limits} {
		if l.DialTimeout == 0 && l.HandshakeTimeout == 0 {
			l.DialTimeout, l.HandshakeTimeout = pairDialTimeout, pairDialTimeout
		}
	}
	ca := identitytest.NewCA(t, "test.local")
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(tcp, Config{Identity: identitytest.Provider(t, ca, serverID), Limits: lim}, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	poolCfg.Identity = identitytest.Provider(t, ca, clientID)
	pool, err := NewPool(poolCfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{ln: ln, pool: pool, want: identity.MustParseID(serverID), tunnel: make(chan tunnelCall), conns: make(chan *ServerConn, 4)}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			p.conns <- c
			go c.Serve(h, func(str *ServerStream, target string) {
				done := make(chan struct{})
				select {
				case p.tunnel <- tunnelCall{str, target, done}:
					<-done
				case <-ctx.Done():
				}
			})
		}
	}()
	t.Cleanup(func() {
		pool.Close()
		cancel()
		ln.Close()
		<-served
	})
	return p
}

func (p *pair) get(t *testing.T) *PeerConn {
	t.Helper()
	pc, err := p.pool.Get(testkit.HangCtx(t), p.ln.Addr().String(), p.want)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

func TestHTTPRequestCarriesPeerIdentity(t *testing.T) {
	var gotTLS string
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			gotTLS = r.TLS.PeerCertificates[0].URIs[0].String()
		}
		io.WriteString(w, "hello "+r.URL.Path)
	}))
	pc := p.get(t)
	if pc.Peer() != p.want {
		t.Fatalf("peer %v, want %v", pc.Peer(), p.want)
	}
	sc := <-p.conns
	if sc.Peer().String() != clientID {
		t.Fatalf("server sees peer %v, want %s", sc.Peer(), clientID)
	}
	req, _ := http.NewRequest("GET", "https://web/x", nil)
	resp, err := pc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello /x" || gotTLS != clientID {
		t.Fatalf("body %q, TLS peer %q", body, gotTLS)
	}
}

// Half-close both ways: each direction ends on its own, the other keeps
// flowing.
func TestTunnelHalfClose(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)
	str, err := pc.OpenTunnel(testkit.HangCtx(t), "db:5432")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := str.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	call := <-p.tunnel
	defer close(call.done)
	if call.target != "db:5432" {
		t.Fatalf("target %q", call.target)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(call.str, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q %v", buf, err)
	}
	// Server half-closes first; client keeps sending.
	call.str.Write([]byte("pong"))
	if err := call.str.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(str)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q %v, want pong then EOF", got, err)
	}
	if _, err := str.Write([]byte("more")); err != nil {
		t.Fatalf("client write after the server's FIN: %v", err)
	}
	str.CloseWrite()
	got, err = io.ReadAll(call.str)
	if err != nil || string(got) != "more" {
		t.Fatalf("server read %q %v, want more then EOF", got, err)
	}
}

func TestTunnelResetCodes(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)

	// Inbound resets with a code: the outbound side reads that code.
	str, err := pc.OpenTunnel(testkit.HangCtx(t), "nowhere")
	if err != nil {
		t.Fatal(err)
	}
	call := <-p.tunnel
	call.str.Reset(meshcode.UnknownTarget)
	close(call.done)
	_, err = io.ReadAll(str)
	if se, ok := errors.AsType[*meshcode.StreamError](err); !ok || se.Code != meshcode.UnknownTarget || !se.Remote {
		t.Fatalf("client read error %v, want remote StreamError UnknownTarget", err)
	}

	// Mid-stream, after data: still the code, after the data.
	str, err = pc.OpenTunnel(testkit.HangCtx(t), "db")
	if err != nil {
		t.Fatal(err)
	}
	call = <-p.tunnel
	call.str.Write([]byte("partial"))
	call.str.Reset(meshcode.Reset)
	close(call.done)
	got, err := io.ReadAll(str)
	if se, ok := errors.AsType[*meshcode.StreamError](err); !ok || se.Code != meshcode.Reset || string(got) != "partial" {
		t.Fatalf("client read %q, %v; want partial, then a Reset", got, err)
	}

	// Outbound resets: the inbound side reads a reset by the peer.
	str, err = pc.OpenTunnel(testkit.HangCtx(t), "db")
	if err != nil {
		t.Fatal(err)
	}
	str.Write([]byte("x"))
	call = <-p.tunnel
	defer close(call.done)
	io.ReadFull(call.str, make([]byte, 1))
	str.Reset(meshcode.Reset)
	_, err = io.ReadAll(call.str)
	if se, ok := errors.AsType[*meshcode.StreamError](err); !ok || se.Code != meshcode.Reset || !se.Remote {
		t.Fatalf("server read error %v, want remote StreamError Reset", err)
	}
	if _, err := str.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after our own reset succeeded")
	}
}

// A big transfer both ways at once: flow control, framing of large writes.
func TestTunnelBulk(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)
	str, err := pc.OpenTunnel(testkit.HangCtx(t), "db")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB
	go func() { str.Write(data); str.CloseWrite() }()
	call := <-p.tunnel
	defer close(call.done)
	go func() { io.Copy(call.str, call.str); call.str.CloseWrite() }()
	got, err := io.ReadAll(str)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echoed %d bytes (%v), want %d", len(got), err, len(data))
	}
}

func TestGoAwayDrainsPeer(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	pc := p.get(t)
	sc := <-p.conns
	if err := sc.GoAway(testkit.HangCtx(t)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "connection not alive after GOAWAY", func() bool { return !pc.Alive() })
	// Draining: the balancer prefers other endpoints (Unavailable), as
	// over QUIC, where the drain is recorded when GOAWAY arrives.
	if !p.pool.Unavailable(p.ln.Addr().String(), p.want) {
		t.Error("a peer that sent GOAWAY is not reported Unavailable")
	}
	// The next Get redials at once (no back-off: the peer answered) and
	// never hands out the connection that received GOAWAY.
	if pc2 := p.get(t); pc2 == pc {
		t.Fatal("the pool handed out the connection that received GOAWAY")
	}
	if p.pool.Unavailable(p.ln.Addr().String(), p.want) {
		t.Error("reported Unavailable with a new connection")
	}
}

func TestDialRefusesWrongIdentity(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	_, err := p.pool.Get(testkit.HangCtx(t), p.ln.Addr().String(), identity.MustParseID("spiffe://test.local/other"))
	if err == nil || !errors.Is(err, meshcode.ErrPeerUnavailable) || !strings.Contains(err.Error(), "wrong_id") {
		t.Fatalf("dial to a server with another identity: %v", err)
	}
}

// A client of another trust domain (its own CA) is refused by the server:
// the dial fails, nothing is served.
func TestServerRefusesUntrustedClient(t *testing.T) {
	p := newPair(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("request served to an untrusted client") }))
	other := identitytest.NewCA(t, "test.local")
	pool, err := NewPool(Config{Identity: identitytest.Provider(t, other, clientID), Limits: p.pool.cfg.Limits})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(testkit.HangCtx(t), 10*time.Second)
	defer cancel()
	if _, err := pool.Get(ctx, p.ln.Addr().String(), p.want); err == nil {
		t.Fatal("a client with an untrusted certificate got a connection")
	}
}

func TestRequestErrorKindsOfClosedConn(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)
	pc.cc.Close()
	req, _ := http.NewRequest("GET", "https://web/", nil)
	_, err := pc.RoundTrip(req)
	if !errors.Is(err, meshcode.ErrNotProcessed) {
		t.Fatalf("request on a closed connection: %v, want it marked not processed", err)
	}
}

// The transparent path's destination port rides in the tunnel header
// over TCP as over QUIC: the server's stream reports it, and a tunnel
// without one reports none.
func TestTunnelCarriesDestPort(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)
	for _, tt := range []struct {
		hdr    tunnel.Header
		port   uint16
		hasOne bool
	}{
		{tunnel.Header{Target: "web.default"}.WithDestPort(8082), 8082, true},
		{tunnel.Header{Target: "web.default"}, 0, false},
	} {
		str, err := pc.OpenTunnelHeader(testkit.HangCtx(t), tt.hdr)
		if err != nil {
			t.Fatal(err)
		}
		call := <-p.tunnel
		port, ok := call.str.DestPort()
		if call.target != "web.default" || port != tt.port || ok != tt.hasOne {
			t.Errorf("server got target %q, port %d (%v); want web.default, %d (%v)", call.target, port, ok, tt.port, tt.hasOne)
		}
		str.Reset(0)
		close(call.done)
	}
}
