package inbound

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// BenchmarkHTTPChain is the inbound sidecar's own work for one request
// from a peer: the whole chain (identify, shed, measure, route,
// authorize, forward) to an app that answers at once. allocs/op counts
// what the proxy adds per request; quic-go's and net/http's share is in
// proxy/sidecar's BenchmarkHTTP1.
func BenchmarkHTTPChain(b *testing.B) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1"})
	if err != nil {
		b.Fatal(err)
	}
	up := &fakeUpstream{status: 200}
	cfg := Config{Upstream: up, Logger: discard, Name: "bench", Metrics: telemetry.New(prometheus.NewRegistry()), Options: Options{}.WithDefaults()}
	pol, err := newPolicy(cfg, routes)
	if err != nil {
		b.Fatal(err)
	}
	var inflight atomic.Int64
	h := peerHTTP{chain: newHTTPChain(cfg, routes, newDestPorts(cfg.Options, routes), pol, &inflight), peer: testPeer, peerName: testPeer.String()}
	r := httptest.NewRequest("GET", "https://web/x", nil)
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/3.0", 3, 0
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		clear(r.Header) // identify strips the mesh field from it
		r.Header["Quicmesh-Service"] = []string{"web"}
		r.Header["User-Agent"] = []string{"Go-http-client/1.1"}
		h.ServeHTTP(w, r)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Flush()                      {}
