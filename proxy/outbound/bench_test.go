package outbound

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2/hpack"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// BenchmarkForwarder is the outbound sidecar's own work for one HTTP/1.1
// request after routing: connect (a pooled connection), the mesh
// fields, PrepareOutgoing and Forward, with a peer that answers at once.
// allocs/op counts what the proxy adds per request; quic-go's and
// net/http's share is in proxy/sidecar's BenchmarkHTTP1.
func BenchmarkForwarder(b *testing.B) {
	peers := &fakePeers{}
	f := forwarder{connector: newConnector(Config{
		Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}},
		Peers:     peers, Balancer: &fakeBalancer{}, Options: Options{MaxAttempts: 3},
	}), timeout: time.Second}
	r := httptest.NewRequest("GET", "http://web/x", nil)
	r.Header.Set("User-Agent", "Go-http-client/1.1")
	r.Header.Set("Accept-Encoding", "gzip")
	t := target{service: "web", authority: "web"}
	var sent http.Header
	peers.newConn = func(string) *fakeConn {
		return &fakeConn{alive: true, roundTrip: func(out *http.Request) (*http.Response, error) {
			sent = out.Header
			return textResponse(out, 200, "ok"), nil
		}}
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		if o := f.serve(w, r, t); o.err != nil {
			b.Fatal(o.err)
		}
	}
	b.ReportMetric(float64(len(sent)), "fields")
}

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Flush()                      {}

// BenchmarkHTTPPath is one HTTP/1.1 GET through the whole outbound
// handler of a bound listener (chain.go: Guard, load shedding, routing,
// metrics, the policy stages with the default ResponseHeaderTimeout,
// the forwarder), with metrics on and a peer that answers at once:
// allocs/op is what the outbound's own layers add per request, without
// net/http's server and quic-go's client.
func BenchmarkHTTPPath(b *testing.B) {
	peers := &fakePeers{newConn: func(string) *fakeConn {
		return &fakeConn{alive: true, roundTrip: func(out *http.Request) (*http.Response, error) {
			return textResponse(out, 200, "ok"), nil
		}}
	}}
	p := New(Config{
		Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}},
		Peers:     peers,
		Metrics:   telemetry.New(prometheus.NewRegistry()),
	})
	defer p.Close()
	h := p.httpPath("web")
	r := httptest.NewRequest("GET", "http://web/x", nil)
	r.Header.Set("User-Agent", "Go-http-client/1.1")
	r.Header.Set("Accept-Encoding", "gzip")
	ctx, cancel := context.WithCancel(r.Context()) // net/http's request context is a cancel context
	defer cancel()
	r = r.WithContext(ctx)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}

// BenchmarkOutgoingRequest is the request for the peer made from the
// benchmark's HTTP/1.1 GET, and its fields encoded as quic-go's client
// does (a name not in lower case lower-cased per field, names and values
// Huffman-coded): through bridge.PrepareOutgoing and setMeshHeaders as
// before, and through prepareOutgoing.
func BenchmarkOutgoingRequest(b *testing.B) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header = http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}}
	t := target{service: "web", authority: "127.0.0.1:8080"}
	var wire []byte
	encode := func(h http.Header) {
		for k, vv := range h {
			name := strings.ToLower(k)
			for _, v := range vv {
				wire = hpack.AppendHuffmanString(hpack.AppendHuffmanString(wire[:0], name), v)
			}
		}
	}
	b.Run("bridge", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out := bridge.PrepareOutgoing(r.Context(), r, "https", t.authority)
			setMeshHeaders(out.Header, r, t)
			encode(out.Header)
		}
	})
	b.Run("lean", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			encode(prepareOutgoing(r.Context(), r, t).Header)
		}
	})
}
