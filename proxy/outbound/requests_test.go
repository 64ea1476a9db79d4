package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

func testFailures(buf *testkit.LogBuffer) failureLog {
	return failureLog{log: buf.Logger(slog.LevelDebug), limiter: lograte.New(0, 0, nil)}
}

// Every failure of the forwarding stages becomes one proxy error response
// of the right status and text, logged (or not) as before the split.
func TestErrorResponses(t *testing.T) {
	peer := &fakeConn{addr: "10.0.0.1:4433", peer: identity.MustParseID("spiffe://test/ns/x/sa/api")}
	tests := []struct {
		name     string
		bound    string
		err      error
		deadline bool // the request's own deadline has passed
		status   int
		text     string // in the Quicmesh-Proxy-Error header
		logged   string // the log message, "" for none
	}{
		{name: "served", status: 200},
		{name: "unknown service on the proxy listener", err: &connectError{discoveryError("nope", discovery.ErrUnknownService), bridge.Unavailable},
			status: 503, text: `no service "nope" in discovery (the HTTP proxy takes`, logged: "http route failed"},
		{name: "unknown service on a bound listener", bound: "nope", err: &connectError{discoveryError("nope", discovery.ErrUnknownService), bridge.Unavailable},
			status: 503, text: `outbound test: no service "nope" in discovery`, logged: "http route failed"},
		{name: "connect timeout", bound: "web", err: &connectError{context.DeadlineExceeded, bridge.Timeout}, status: 504, logged: "http route failed"},
		{name: "forward reset", bound: "web", err: &forwardError{peer, errors.New("stream reset")}, status: 502,
			text: "forwarding to spiffe://test/ns/x/sa/api: stream reset", logged: "http forward failed"},
		{name: "forward past the request deadline", bound: "web", err: &forwardError{peer, errors.New("stream reset")}, deadline: true, status: 504, logged: "http forward failed"},
		{name: "forward timeout", bound: "web", err: &forwardError{peer, fmt.Errorf("x: %w", context.DeadlineExceeded)}, status: 504, logged: "http forward failed"},
		{name: "peer declared dead by its idle timeout", bound: "web", err: &forwardError{peer, meshcode.Mark(idleTimeout{}, meshcode.ErrConnDead, meshcode.ErrIdleTimeout)}, status: 502, logged: "http forward failed"},
		{name: "client cancelled", bound: "web", err: cancelledError{}, status: 502, text: "the client cancelled the request before it was forwarded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testkit.LogBuffer
			e := errorResponses{bound: tt.bound, who: "outbound test", failures: testFailures(&logs),
				next: stageFunc(func(w http.ResponseWriter, r *http.Request, _ target) outcome {
					if tt.err != nil {
						return outcome{err: tt.err}
					}
					w.WriteHeader(200)
					return outcome{res: bridge.Result{Status: 200}}
				})}
			r := httptest.NewRequest("GET", "/", nil)
			if tt.deadline {
				ctx, cancel := context.WithDeadline(r.Context(), time.Now().Add(-time.Millisecond))
				defer cancel()
				r = r.WithContext(ctx)
			}
			rec := httptest.NewRecorder()
			o := e.serve(rec, r, target{service: "web", authority: "web"})
			if o.err != nil || rec.Code != tt.status || o.res.Status != tt.status {
				t.Fatalf("got %d (result %+v, error %v), want %d", rec.Code, o.res, o.err, tt.status)
			}
			if h := rec.Header().Get(httpx.HeaderProxyError); !strings.Contains(h, tt.text) || (tt.err != nil) != (h != "") {
				t.Errorf("%s = %q, want it to contain %q", httpx.HeaderProxyError, h, tt.text)
			}
			if n := strings.Count(logs.String(), "\n"); n != min(len(tt.logged), 1) || !strings.Contains(logs.String(), tt.logged) {
				t.Errorf("logged %q, want %q", logs.String(), tt.logged)
			}
		})
	}
}

func TestBodyless(t *testing.T) {
	chunked := httptest.NewRequest("POST", "/", strings.NewReader("hello"))
	chunked.ContentLength = -1
	chunked.TransferEncoding = []string{"chunked"}
	tests := []struct {
		name string
		r    *http.Request
		want bool
	}{
		{"GET", httptest.NewRequest("GET", "/", nil), true},
		{"POST", httptest.NewRequest("POST", "/", strings.NewReader("hello")), false},
		{"chunked", chunked, false},
		{"empty POST", httptest.NewRequest("POST", "/", strings.NewReader("")), true},
	}
	for _, tt := range tests {
		if got := bodyless(tt.r); got != tt.want {
			t.Errorf("bodyless(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The forwarder feeds the balancer one outcome per request: its latency
// to the response, failed for a 5xx or no response; it forgets a
// connection the failure showed broken.
func TestForwarder(t *testing.T) {
	dead := meshcode.Mark(errors.New("connection lost"), meshcode.ErrConnDead)
	tests := []struct {
		name      string
		status    int
		err       error
		alive     bool
		cancelled bool
		wantErr   bool
		failed    bool
		forgotten bool
		headers   bool // the mesh headers reached the peer
	}{
		{name: "ok", status: 200, alive: true, headers: true},
		{name: "app 503", status: 503, alive: true, failed: true, headers: true},
		{name: "reset stream", err: errors.New("reset"), alive: true, wantErr: true, failed: true, headers: true},
		{name: "dead connection", err: dead, alive: true, wantErr: true, failed: true, forgotten: true, headers: true},
		{name: "connection no longer alive", err: errors.New("x"), alive: false, wantErr: true, failed: true, forgotten: true, headers: true},
		// Not the endpoint's fault: no failure.
		{name: "client gone while connecting", cancelled: true, alive: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sent *http.Request
			r := httptest.NewRequest("GET", "/x", nil)
			ctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			r = r.WithContext(ctx)
			peers := &fakePeers{newConn: func(string) *fakeConn {
				if tt.cancelled {
					cancel() // the client leaves while we connect
				}
				return &fakeConn{alive: tt.alive, roundTrip: func(r *http.Request) (*http.Response, error) {
					sent = r
					if tt.err != nil {
						return nil, tt.err
					}
					return textResponse(r, tt.status, "body"), nil
				}}
			}}
			bal := &fakeBalancer{}
			f := forwarder{connector: newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}}, Peers: peers, Balancer: bal, Options: Options{MaxAttempts: 3}}), timeout: time.Second}
			rec := httptest.NewRecorder()
			o := f.serve(rec, r, target{service: "web", authority: "web:80"})
			if (o.err != nil) != tt.wantErr {
				t.Fatalf("error %v, want one: %v", o.err, tt.wantErr)
			}
			if !tt.wantErr && (rec.Code != tt.status || o.res.Status != tt.status || o.peer == nil) {
				t.Fatalf("wrote %d, result %+v, peer %v; want %d from the peer", rec.Code, o.res, o.peer, tt.status)
			}
			if (sent != nil) != tt.headers || (sent != nil && (len(sent.Header[httpx.WireService]) != 1 || sent.Header[httpx.WireService][0] != "web" || sent.Header[httpx.WireOrigProto] != nil || sent.URL.Host != "web:80")) {
				t.Errorf("peer got %v", sent)
			}
			reports := bal.got()
			if len(reports) != 1 || reports[0].outcome.Failed != tt.failed || bal.stillOutstanding() != 0 {
				t.Fatalf("balancer heard %+v with %d outstanding, want one outcome, failed=%v, nothing outstanding", reports, bal.stillOutstanding(), tt.failed)
			}
			if c := peers.conns["a:1"]; c.forgotten.Load() != tt.forgotten || c.begun.Load() != 0 {
				t.Errorf("connection forgotten=%v (want %v), streams still begun %d", c.forgotten.Load(), tt.forgotten, c.begun.Load())
			}
		})
	}
}

// idleTimeout is how the QUIC transport's idle-timeout error looks: a
// net.Error whose Timeout is true.
type idleTimeout struct{}

func (idleTimeout) Error() string   { return "timeout: no recent network activity" }
func (idleTimeout) Timeout() bool   { return true }
func (idleTimeout) Temporary() bool { return false }

// The mesh fields: the service always, the app's protocol only when it
// is h2 (the far side takes a missing one for h1), the destination port
// only on the transparent path.
func TestSetMeshHeaders(t *testing.T) {
	tests := []struct {
		name  string
		major int
		port  uint16
		want  http.Header
	}{
		{"HTTP/1.1", 1, 0, http.Header{"quicmesh-service": {"web"}}},
		{"h2", 2, 0, http.Header{"quicmesh-service": {"web"}, "quicmesh-orig-proto": {"h2"}}},
		{"transparent", 1, 8080, http.Header{"quicmesh-service": {"web"}, "quicmesh-dest-port": {"8080"}}},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.ProtoMajor = tt.major
		h := http.Header{}
		setMeshHeaders(h, r, target{service: "web", authority: "web:80", port: tt.port})
		if !reflect.DeepEqual(h, tt.want) {
			t.Errorf("%s: mesh fields %v, want %v", tt.name, h, tt.want)
		}
	}
}

// prepareOutgoing makes the request bridge.PrepareOutgoing makes, with
// the mesh fields, whichever way it takes: the same target, Host, body,
// trailers and fields (names in lower case, which the HTTP/3 client
// sends as they are), and r is left as it was, so a retry prepares the
// same request again. What the app sent in the mesh's namespace does not
// go out: only the sidecar's own mesh fields do.
func TestPrepareOutgoingAsBridge(t *testing.T) {
	withTrailer := func(r *http.Request) *http.Request {
		r.TransferEncoding = []string{"chunked"}
		r.ContentLength = -1
		r.Trailer = http.Header{"X-Sum": nil}
		return r
	}
	tests := []struct {
		name string
		r    *http.Request
	}{
		{"GET", httptest.NewRequest("GET", "/x?q=1", nil)},
		{"GET, forged mesh fields, hop-by-hop", httptest.NewRequest("GET", "/x", nil)},
		{"POST with a body", httptest.NewRequest("POST", "/x", strings.NewReader("body"))},
		{"POST, empty body", httptest.NewRequest("POST", "/x", http.NoBody)},
		{"chunked body with trailers", withTrailer(httptest.NewRequest("POST", "/x", strings.NewReader("body")))},
		{"absolute-form", httptest.NewRequest("GET", "http://web:80/x", nil)},
	}
	tests[1].r.Header = http.Header{
		"User-Agent": {"curl"}, "Accept": {"*/*"}, "X-Custom": {"a", "b"},
		"Quicmesh-Service": {"forged"}, "Quicmesh-Peer-Identity": {"spiffe://forged"},
		"Connection": {"keep-alive, X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"5"},
		"Te": {"trailers, deflate"}, "Expect": {"100-continue"}, "Upgrade": {"h2c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			before := r.Header.Clone()
			tgt := target{service: "web", authority: "web:80", port: 8080}
			got := prepareOutgoing(r.Context(), r, tgt)
			if !reflect.DeepEqual(r.Header, before) {
				t.Fatalf("the app's request changed: %v -> %v", before, r.Header)
			}
			want := bridge.PrepareOutgoing(r.Context(), r, "https", tgt.authority)
			setMeshHeaders(want.Header, r, tgt)
			if got.URL.String() != want.URL.String() || got.Host != want.Host || got.RequestURI != "" || got.Close ||
				(got.Body == nil) != (want.Body == nil) || !reflect.DeepEqual(got.Trailer, want.Trailer) {
				t.Errorf("got %s %s Host %q body %v trailer %v; want %s Host %q body %v trailer %v",
					got.Method, got.URL, got.Host, got.Body != nil, got.Trailer, want.URL, want.Host, want.Body != nil, want.Trailer)
			}
			if g, w := canonicalFields(got.Header), canonicalFields(want.Header); !reflect.DeepEqual(g, w) {
				t.Errorf("fields %v, want %v", g, w)
			}
			for k, vv := range got.Header {
				if httpx.IsMeshHeader(k) && !(k == httpx.WireService && len(vv) == 1 && vv[0] == "web" || k == httpx.WireDestPort && len(vv) == 1 && vv[0] == "8080") {
					t.Errorf("mesh field sent: %s: %q", k, vv)
				}
			}
		})
	}
}

// canonicalFields is h with canonical names, as the far side reads it.
func canonicalFields(h http.Header) http.Header {
	c := http.Header{}
	for k, vv := range h {
		for _, v := range vv {
			c.Add(k, v)
		}
	}
	return c
}
