package outbound

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
)

// The order of the HTTP path is structural: whatever state the inner
// layers are in, Guard answers a malformed request first, and a stream
// reset before it started costs no work at all.
func TestHTTPPathOrder(t *testing.T) {
	malformed := func() *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header["Bad Name"] = []string{"x"}
		return r
	}
	tests := []struct {
		name      string
		req       func() *http.Request
		full      bool // the load shed is at its limit
		want      int
		wantError string // in the Quicmesh-Proxy-Error header
	}{
		{name: "forwarded", req: func() *http.Request { return httptest.NewRequest("GET", "/", nil) }, want: 200},
		{name: "shed", req: func() *http.Request { return httptest.NewRequest("GET", "/", nil) }, full: true, want: 503, wantError: "overloaded"},
		{name: "malformed, not shed", req: malformed, full: true, want: 400, wantError: "request rejected"},
		// No response at all (the recorder's default), and nothing shed.
		{name: "reset before start", req: func() *http.Request {
			r := httptest.NewRequest("GET", "/", nil)
			c, _ := net.Pipe()
			ctx, cancel := context.WithCancel(h2guard.NewContext(r.Context(), h2guard.Wrap(c, h2guard.Limit{}, func() {})))
			cancel()
			return r.WithContext(ctx)
		}, full: true, want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peers := &fakePeers{}
			p := New(Config{Discovery: testProxy(peers).cfg.Discovery, Peers: peers, Options: Options{MaxInFlight: 1}})
			if tt.full {
				p.shed.inflight.Store(1)
			}
			rec := httptest.NewRecorder()
			p.httpPath("web").ServeHTTP(rec, tt.req())
			if rec.Code != tt.want || !strings.Contains(rec.Header().Get(httpx.HeaderProxyError), tt.wantError) {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Header().Get(httpx.HeaderProxyError), tt.want, tt.wantError)
			}
			if dialed := len(peers.dialed()) > 0; dialed != (tt.name == "forwarded") {
				t.Errorf("dialed a peer: %v", dialed)
			}
		})
	}
}
