package inbound

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

var (
	testPeer = identity.MustParseID("spiffe://test.local/ns/default/sa/client")
	discard  = slog.New(slog.DiscardHandler)
)

// nextHTTP is the layer under test's next one: it records the call it
// got and answers with res and err.
type nextHTTP struct {
	called *httpCall
	res    bridge.Result
	err    error
}

func (n *nextHTTP) serveHTTP(c *httpCall) (bridge.Result, error) {
	n.called = c
	return n.res, n.err
}

// newCall is a request for target as a peer's connection carries it
// (tun nil), with the given extra header fields.
func newCall(method, host string, header http.Header) (*httpCall, *httptest.ResponseRecorder) {
	r := httptest.NewRequest(method, "http://"+host+"/", nil)
	for k, vv := range header {
		r.Header[k] = vv
	}
	w := httptest.NewRecorder()
	return &httpCall{w: w, r: r, peer: testPeer, target: host}, w
}

// metricSum sums every sample of the metric family name.
func metricSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func TestIdentify(t *testing.T) {
	tunnel := func(proto int) *httpCall {
		c, _ := newCall("GET", "ignored", http.Header{"Quicmesh-Service": {"forged"}})
		c.r.ProtoMajor = proto
		c.tun = newStreamConn(&memStream{}, nil, nil, tunnelInfo{peer: testPeer, target: "web:8080"})
		return c
	}
	fromHeaders := func(h http.Header) *httpCall { c, _ := newCall("GET", "host.example", h); return c }
	tests := []struct {
		name              string
		call              *httpCall
		target, origProto string
	}{
		{"HTTP request: the service header names the target", fromHeaders(http.Header{"Quicmesh-Service": {"web"}, "Quicmesh-Orig-Proto": {"h2"}}), "web", "h2"},
		{"HTTP request without it: the authority", fromHeaders(nil), "host.example", ""},
		{"HTTP/1 in a tunnel: the tunnel's target, headers ignored", tunnel(1), "web:8080", "h1"},
		{"HTTP/2 in a tunnel", tunnel(2), "web:8080", "h2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.call.r.Header.Set(httpx.HeaderPeerIdentity, "spiffe://evil/forged")
			next := &nextHTTP{}
			identify{next: next}.serveHTTP(tt.call)
			c := next.called
			if c == nil || c.target != tt.target || c.origProto != tt.origProto {
				t.Fatalf("next got %+v; want target %q, orig proto %q", c, tt.target, tt.origProto)
			}
			for k := range c.r.Header {
				if httpx.IsMeshHeader(k) {
					t.Errorf("mesh header %s left in the request", k)
				}
			}
		})
	}
}

func TestShed(t *testing.T) {
	resetCtx, cancel := context.WithCancel(context.Background())
	cancel()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	resetCtx = h2guard.NewContext(resetCtx, h2guard.Wrap(a, h2guard.Limit{}, nil))
	tests := []struct {
		name       string
		max        int
		inflight   int64 // already in flight
		ctx        context.Context
		wantNext   bool
		wantStatus int // 0: nothing written
		wantShed   float64
	}{
		{"below the limit", 2, 1, context.Background(), true, 0, 0},
		{"at the limit", 2, 2, context.Background(), false, http.StatusServiceUnavailable, 1},
		{"no limit", -1, 1 << 20, context.Background(), true, 0, 0},
		{"reset by the peer before we started", 2, 0, resetCtx, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			var inflight atomic.Int64
			inflight.Store(tt.inflight)
			next := &nextHTTP{}
			c, w := newCall("GET", "web", nil)
			c.r = c.r.WithContext(tt.ctx)
			shed{next: next, max: tt.max, inflight: &inflight, metrics: telemetry.New(reg), who: "inbound test"}.serveHTTP(c)
			if (next.called != nil) != tt.wantNext {
				t.Errorf("next called: %v, want %v", next.called != nil, tt.wantNext)
			}
			if tt.wantStatus != 0 && w.Code != tt.wantStatus {
				t.Errorf("status %d, want %d", w.Code, tt.wantStatus)
			}
			if got := metricSum(t, reg, "quicmesh_load_shed_total"); got != tt.wantShed {
				t.Errorf("load shed metric %v, want %v", got, tt.wantShed)
			}
			if got := inflight.Load(); got != tt.inflight {
				t.Errorf("in flight after the call: %d, want %d", got, tt.inflight)
			}
		})
	}
}

func TestMeasure(t *testing.T) {
	tests := []struct {
		name string
		// inner is what the layers below do; it may report a switch.
		inner func(c *httpCall) (bridge.Result, error)
	}{
		{"a response", func(*httpCall) (bridge.Result, error) { return bridge.Result{Status: 200}, nil }},
		{"a switch, recorded when the connection changes hands", func(c *httpCall) (bridge.Result, error) {
			c.recordResponse(bridge.Result{Status: 101})
			return bridge.Result{Status: 101}, nil
		}},
		{"a failure", func(*httpCall) (bridge.Result, error) { return bridge.Result{}, fail(bridge.BadGateway, "x") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			c, _ := newCall("GET", "web", nil)
			measure{next: layerFunc(tt.inner), metrics: telemetry.New(reg)}.serveHTTP(c)
			if got := metricSum(t, reg, "quicmesh_request_total"); got != 1 {
				t.Errorf("requests recorded %v, want 1", got)
			}
			if got := metricSum(t, reg, "quicmesh_response_total"); got != 1 {
				t.Errorf("responses recorded %v, want 1 (once, however reported)", got)
			}
		})
	}
}

type layerFunc func(c *httpCall) (bridge.Result, error)

func (f layerFunc) serveHTTP(c *httpCall) (bridge.Result, error) { return f(c) }

func TestMapErrors(t *testing.T) {
	grpc := http.Header{"Content-Type": {"application/grpc"}}
	other := errors.New("not a failure")
	tests := []struct {
		name       string
		header     http.Header
		err        error
		wantStatus int
		wantGRPC   string
		wantErr    error
	}{
		{"no failure: the layers below answered", nil, nil, 0, "", nil},
		{"unavailable", nil, fail(bridge.Unavailable, "no app"), 503, "", nil},
		{"bad gateway", nil, fail(bridge.BadGateway, "app down"), 502, "", nil},
		{"timeout", nil, fail(bridge.Timeout, "slow"), 504, "", nil},
		{"gRPC: a status in the trailers-only answer", grpc, fail(bridge.Unavailable, "no app"), 200, "14", nil},
		{"gRPC timeout", grpc, fail(bridge.Timeout, "slow"), 200, "4", nil},
		{"another error passes", nil, other, 0, "", other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, w := newCall("POST", "web", tt.header)
			res, err := mapErrors{next: &nextHTTP{err: tt.err}, who: "inbound test"}.serveHTTP(c)
			if err != tt.wantErr {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if tt.wantStatus == 0 {
				if w.Header().Get(httpx.HeaderProxyError) != "" {
					t.Fatalf("wrote an error response: %v", w.Header())
				}
				return
			}
			if w.Code != tt.wantStatus || res.Status != tt.wantStatus || res.GRPCStatus != tt.wantGRPC || w.Header().Get("Grpc-Status") != tt.wantGRPC {
				t.Fatalf("status %d (result %+v), grpc-status %q; want %d, %q", w.Code, res, w.Header().Get("Grpc-Status"), tt.wantStatus, tt.wantGRPC)
			}
			var f *httpFailure
			errors.As(tt.err, &f)
			if got := w.Header().Get(httpx.HeaderProxyError); got != "inbound test: "+f.reason {
				t.Fatalf("%s: %q", httpx.HeaderProxyError, got)
			}
		})
	}
}

func TestRouteHTTP(t *testing.T) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1", "grpc": "h2c://127.0.0.1:2", "db": "tcp://127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target   string
		want     route
		wantKind bridge.ErrorKind
		wantErr  string // "" when next gets the call
	}{
		{"web", route{"web", ProtoAuto, "127.0.0.1:1"}, 0, ""},
		{"web:80", route{"web", ProtoAuto, "127.0.0.1:1"}, 0, ""},
		{"grpc", route{"grpc", ProtoH2C, "127.0.0.1:2"}, 0, ""},
		{"nosuch", route{}, bridge.Unavailable, `no local app serves "nosuch"`},
		{"db", route{}, bridge.BadGateway, `route for "db" does not accept HTTP`},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			next := &nextHTTP{}
			c, _ := newCall("GET", tt.target, nil)
			_, err := routeHTTP{next: next, routes: routes}.serveHTTP(c)
			if tt.wantErr == "" {
				if err != nil || next.called == nil || next.called.route != tt.want {
					t.Fatalf("err %v, next got %+v; want route %+v", err, next.called, tt.want)
				}
				return
			}
			var f *httpFailure
			if !errors.As(err, &f) || f.kind != tt.wantKind || f.reason != tt.wantErr || next.called != nil {
				t.Fatalf("err %v (next called: %v); want failure %v %q", err, next.called != nil, tt.wantKind, tt.wantErr)
			}
		})
	}
}

func TestSwitchProtocolsRefuses(t *testing.T) {
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}
	inTunnel := newStreamConn(&memStream{}, nil, nil, tunnelInfo{peer: testPeer, target: "web"})
	tests := []struct {
		name     string
		method   string
		header   http.Header
		tun      *streamConn
		proto    string
		wantNext bool
		wantErr  string
	}{
		{"an ordinary request goes on", "GET", nil, nil, ProtoAuto, true, ""},
		{"an upgrade carried as HTTP/3", "GET", upgrade, nil, ProtoAuto, false, "switching protocols needs HTTP/1.1 carried by a tunnel"},
		{"CONNECT carried as HTTP/3", "CONNECT", nil, nil, ProtoAuto, false, "switching protocols needs HTTP/1.1 carried by a tunnel"},
		{"an upgrade to an h2c app", "GET", upgrade, inTunnel, ProtoH2C, false, "the app speaks h2c only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &nextHTTP{}
			c, _ := newCall(tt.method, "web", tt.header)
			c.tun, c.route = tt.tun, route{proto: tt.proto, addr: "127.0.0.1:1"}
			_, err := switchProtocols{next: next, up: &fakeUpstream{}, connectTimeout: time.Second, log: discard}.serveHTTP(c)
			if (next.called != nil) != tt.wantNext {
				t.Fatalf("next called: %v, want %v", next.called != nil, tt.wantNext)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// fakeUpstream records what reaches the app and answers with status, or
// fails with err.
type fakeUpstream struct {
	status int
	err    error
	// wait, if set, blocks RoundTrip until the request's context ends.
	wait bool

	req *http.Request
	h2c bool
}

func (u *fakeUpstream) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if u.err != nil {
		return nil, u.err
	}
	return nil, errors.New("fakeUpstream: no dialing")
}

func (u *fakeUpstream) RoundTrip(req *http.Request, h2c bool) (*http.Response, error) {
	u.req, u.h2c = req, h2c
	if u.wait {
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	if u.err != nil {
		return nil, u.err
	}
	return &http.Response{StatusCode: u.status, Header: http.Header{}, Body: http.NoBody, Request: req}, nil
}

func (u *fakeUpstream) Close() {}

func TestForward(t *testing.T) {
	grpc := http.Header{"Content-Type": {"application/grpc"}}
	tests := []struct {
		name      string
		route     string // protocol
		origProto string
		header    http.Header
		up        fakeUpstream
		wantH2C   bool
		wantKind  bridge.ErrorKind
		wantErr   bool
	}{
		{"auto route, HTTP/1.1 caller: HTTP/1.1", ProtoAuto, "h1", nil, fakeUpstream{status: 200}, false, 0, false},
		{"auto route, HTTP/2 caller: h2c", ProtoAuto, "h2", nil, fakeUpstream{status: 200}, true, 0, false},
		// The outbound side sends Quicmesh-Orig-Proto only for h2.
		{"auto route, no orig proto: HTTP/1.1", ProtoAuto, "", nil, fakeUpstream{status: 200}, false, 0, false},
		{"auto route, gRPC: h2c", ProtoAuto, "", grpc, fakeUpstream{status: 200}, true, 0, false},
		{"http route, HTTP/2 caller: HTTP/1.1", ProtoHTTP, "h2", nil, fakeUpstream{status: 200}, false, 0, false},
		{"h2c route, HTTP/1.1 caller: h2c", ProtoH2C, "h1", nil, fakeUpstream{status: 200}, true, 0, false},
		{"app unreachable: bad gateway", ProtoAuto, "h1", nil, fakeUpstream{err: errors.New("connection refused")}, false, bridge.BadGateway, true},
		{"gRPC deadline passed: timeout", ProtoAuto, "", http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1m"}},
			fakeUpstream{wait: true}, true, bridge.Timeout, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := tt.up
			c, w := newCall("POST", "web", tt.header)
			c.route, c.origProto = route{proto: tt.route, addr: "127.0.0.1:7000"}, tt.origProto
			res, err := forward{up: &up, log: discard}.serveHTTP(c)
			if up.h2c != tt.wantH2C {
				t.Errorf("h2c %v, want %v", up.h2c, tt.wantH2C)
			}
			if got := up.req.Header.Get(httpx.HeaderPeerIdentity); got != testPeer.String() {
				t.Errorf("the app got identity %q, want %q", got, testPeer)
			}
			if up.req.URL.Host != "127.0.0.1:7000" || up.req.Host != "web" {
				t.Errorf("sent to %s with Host %s", up.req.URL.Host, up.req.Host)
			}
			if !tt.wantErr {
				if err != nil || res.Status != tt.up.status || w.Code != tt.up.status {
					t.Fatalf("result %+v, %v, status %d; want %d", res, err, w.Code, tt.up.status)
				}
				return
			}
			var f *httpFailure
			if !errors.As(err, &f) || f.kind != tt.wantKind || !strings.HasPrefix(f.reason, "app 127.0.0.1:7000: ") {
				t.Fatalf("err %v, want a failure of kind %v naming the app", err, tt.wantKind)
			}
		})
	}
}

// The chain in its order: a failure below mapErrors is written once and
// recorded once; identify runs before routing, so a route is found by
// the service header even when the authority names something else.
func TestHTTPChain(t *testing.T) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		header     http.Header
		up         fakeUpstream
		wantStatus int
	}{
		{"routed by the service header", http.Header{"Quicmesh-Service": {"web"}}, fakeUpstream{status: 204}, 204},
		{"unknown service", http.Header{"Quicmesh-Service": {"nosuch"}}, fakeUpstream{status: 204}, 503},
		{"app down", http.Header{"Quicmesh-Service": {"web"}}, fakeUpstream{err: errors.New("refused")}, 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			up := tt.up
			cfg := Config{Upstream: &up, Logger: discard, Name: "test", Metrics: telemetry.New(reg), Options: Options{}.WithDefaults()}
			var inflight atomic.Int64
			pol, err := newPolicy(cfg, routes)
			if err != nil {
				t.Fatal(err)
			}
			chain := newHTTPChain(cfg, routes, newDestPorts(cfg.Options, routes), pol, &inflight)
			w := httptest.NewRecorder()
			r := httptest.NewRequest("GET", "http://other/", nil)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			peerHTTP{chain: chain, peer: testPeer}.ServeHTTP(w, r)
			if w.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %q", w.Code, tt.wantStatus, w.Body)
			}
			if got := metricSum(t, reg, "quicmesh_response_total"); got != 1 {
				t.Fatalf("responses recorded %v, want 1", got)
			}
		})
	}
}

// fakeTunnel is a tunnel stream over the near end of a pipe (writes and
// deadlines work; a pipe cannot half-close, so what the far side sends
// before its FIN, if any, is in); it records resets.
type fakeTunnel struct {
	net.Conn
	in     io.Reader
	resets []meshcode.Code
}

func (f *fakeTunnel) Read(p []byte) (int, error) {
	if f.in != nil {
		return f.in.Read(p)
	}
	return f.Conn.Read(p)
}

func (f *fakeTunnel) CloseWrite() error        { return nil }
func (f *fakeTunnel) Reset(code meshcode.Code) { f.resets = append(f.resets, code); f.Conn.Close() }
func (f *fakeTunnel) Context() context.Context { return context.Background() }

type nextTunnel struct {
	called *tunnelCall
	err    error
}

func (n *nextTunnel) serveTunnel(t *tunnelCall) error { n.called = t; return n.err }

func TestMapResets(t *testing.T) {
	other := errors.New("other")
	tests := []struct {
		name      string
		err       error
		wantReset []meshcode.Code
		wantErr   error
	}{
		{"delivered", nil, nil, nil},
		{"unknown target", &tunnelFailure{code: meshcode.UnknownTarget}, []meshcode.Code{meshcode.UnknownTarget}, nil},
		{"app unreachable", &tunnelFailure{code: meshcode.ConnectFailed}, []meshcode.Code{meshcode.ConnectFailed}, nil},
		{"another error passes, no reset", other, nil, other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer b.Close()
			str := &fakeTunnel{Conn: a}
			err := mapResets{next: &nextTunnel{err: tt.err}}.serveTunnel(&tunnelCall{str: str})
			if err != tt.wantErr || len(str.resets) != len(tt.wantReset) || (len(tt.wantReset) > 0 && str.resets[0] != tt.wantReset[0]) {
				t.Fatalf("err %v, resets %v; want %v, %v", err, str.resets, tt.wantErr, tt.wantReset)
			}
		})
	}
}

func TestRouteTunnel(t *testing.T) {
	routes, err := parseRoutes(Routes{"db": "tcp://127.0.0.1:3", "web": "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target  string
		want    route
		wantErr meshcode.Code // 0: next gets the call
	}{
		{"db", route{"db", ProtoTCP, "127.0.0.1:3"}, 0},
		{"db:5432", route{"db", ProtoTCP, "127.0.0.1:3"}, 0},
		{"web", route{"web", ProtoAuto, "127.0.0.1:1"}, 0},
		{"nosuch", route{}, meshcode.UnknownTarget},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			next := &nextTunnel{}
			err := routeTunnel{next: next, routes: routes}.serveTunnel(&tunnelCall{target: tt.target, log: discard})
			if tt.wantErr == 0 {
				if err != nil || next.called == nil || next.called.route != tt.want {
					t.Fatalf("err %v, next got %+v; want route %+v", err, next.called, tt.want)
				}
				return
			}
			var f *tunnelFailure
			if !errors.As(err, &f) || f.code != tt.wantErr || next.called != nil {
				t.Fatalf("err %v, want a failure with code %v", err, tt.wantErr)
			}
		})
	}
}

// appListener is a TCP app that reads what it is sent until EOF and
// reports it.
func appListener(t *testing.T) (addr string, got <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		ch <- string(b)
	}()
	return ln.Addr().String(), ch
}

// pipeConn is a PeerConn for the addresses only.
type pipeConn struct{ PeerConn }

func (pipeConn) LocalAddr() net.Addr  { return &net.UDPAddr{} }
func (pipeConn) RemoteAddr() net.Addr { return &net.UDPAddr{} }

func TestDeliverTunnel(t *testing.T) {
	refused := "127.0.0.1:1"
	tests := []struct {
		name string
		// proto is the route's; app "" is an app that reads what it gets.
		proto, app string
		send       string // then the far side closes its direction
		silent     bool   // the far side sends nothing and keeps the stream open
		wantReset  meshcode.Code
		wantApp    string
	}{
		{"tcp route: spliced without detection", ProtoTCP, "", "GET / HTTP/1.1\r\n\r\n", false, 0, "GET / HTTP/1.1\r\n\r\n"},
		{"auto route, bytes no HTTP parser takes: spliced", ProtoAuto, "", "\x00\x01binary", false, 0, "\x00\x01binary"},
		{"tcp route, app unreachable", ProtoTCP, refused, "x", false, meshcode.ConnectFailed, ""},
		{"HTTP route, no request in time", ProtoHTTP, "", "", true, meshcode.Reset, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, got := tt.app, (<-chan string)(nil)
			if addr == "" {
				addr, got = appListener(t)
			}
			far, near := net.Pipe()
			defer far.Close()
			str := &fakeTunnel{Conn: near}
			if !tt.silent {
				str.in = strings.NewReader(tt.send)
			}
			go io.Copy(io.Discard, far)
			d := deliverTunnel{up: NewLocalApps(time.Second, 0, 0), connectTimeout: time.Second, headerTimeout: 50 * time.Millisecond}
			err := mapResets{next: d}.serveTunnel(&tunnelCall{str: str, conn: pipeConn{}, peer: testPeer, target: "svc", log: discard, route: route{proto: tt.proto, addr: addr}})
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantReset != 0 {
				if len(str.resets) != 1 || str.resets[0] != tt.wantReset {
					t.Fatalf("resets %v, want %v", str.resets, tt.wantReset)
				}
				return
			}
			if len(str.resets) != 0 {
				t.Fatalf("reset %v", str.resets)
			}
			if b := <-got; b != tt.wantApp {
				t.Fatalf("the app got %q, want %q", b, tt.wantApp)
			}
		})
	}
}

// What a peer sends in the mesh's namespace, hop-by-hop fields and
// Expect do not reach the app; the identity the peer proved does, and
// the rest of the request as bridge.PrepareOutgoing would make it
// (forward cleans the peer's request in place instead of copying it).
func TestForwardCleansPeerRequest(t *testing.T) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"", "body"} {
		up := fakeUpstream{status: 204}
		cfg := Config{Upstream: &up, Logger: discard, Name: "test", Metrics: telemetry.New(prometheus.NewRegistry()), Options: Options{}.WithDefaults()}
		pol, err := newPolicy(cfg, routes)
		if err != nil {
			t.Fatal(err)
		}
		var inflight atomic.Int64
		chain := newHTTPChain(cfg, routes, newDestPorts(cfg.Options, routes), pol, &inflight)
		r := httptest.NewRequest("POST", "https://other/x?q=1", strings.NewReader(body))
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/3.0", 3, 0
		r.Header = http.Header{
			"Quicmesh-Service": {"web"}, "Quicmesh-Peer-Identity": {"spiffe://evil/forged"}, "Quicmesh-Other": {"x"},
			"Connection": {"X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"5"}, "Te": {"trailers"},
			"Expect": {"100-continue"}, "Accept": {"*/*"}, "X-Custom": {"a", "b"},
		}
		want := bridge.PrepareOutgoing(r.Context(), r, "http", "127.0.0.1:1")
		want.Header.Set(httpx.HeaderPeerIdentity, testPeer.String())
		peerHTTP{chain: chain, peer: testPeer, peerName: testPeer.String()}.ServeHTTP(httptest.NewRecorder(), r)
		got := up.req
		if got == nil {
			t.Fatal("the app got no request")
		}
		if !reflect.DeepEqual(got.Header, want.Header) || got.URL.String() != want.URL.String() || got.Host != want.Host ||
			(got.Body == nil) != (want.Body == nil) || got.RequestURI != "" || got.Trailer != nil {
			t.Errorf("body %q: the app got %s Host %q body %v, fields %v; want %s Host %q body %v, fields %v", body,
				got.URL, got.Host, got.Body != nil, got.Header, want.URL, want.Host, want.Body != nil, want.Header)
		}
	}
}
