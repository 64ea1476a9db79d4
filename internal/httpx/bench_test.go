package httpx

import (
	"net/http"
	"testing"
)

func BenchmarkRemoveHopByHopAndStrip(b *testing.B) {
	base := http.Header{
		"Accept":         {"*/*"},
		"Content-Type":   {"application/grpc"},
		"User-Agent":     {"grpc-go/1.85"},
		"Grpc-Timeout":   {"100m"},
		"Te":             {"trailers"},
		"Authorization":  {"Bearer x"},
		"X-Request-Id":   {"abc"},
		"Content-Length": {"42"},
	}
	h := make(http.Header, len(base))
	b.ReportAllocs()
	for b.Loop() {
		clear(h)
		for k, v := range base {
			h[k] = v
		}
		RemoveHopByHop(h)
		StripMeshHeaders(h)
	}
}

func BenchmarkInspectorScan(b *testing.B) {
	stream := []byte(validPipeline)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		in := &inspector{}
		in.scan(stream)
	}
}

// BenchmarkInspectorScanHead is one typical request head (a browser's
// GET) as the outbound sidecar's HTTP/1.1 server reads it: most of the
// inspector's work per request.
func BenchmarkInspectorScanHead(b *testing.B) {
	head := []byte("GET /api/v1/items?page=2&sort=desc HTTP/1.1\r\n" +
		"Host: web.default.svc.cluster.local:8080\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\n" +
		"Accept-Encoding: gzip, deflate, br\r\n" +
		"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n" +
		"X-Request-Id: 9f0c2a4e-7b1d-4c3a-8e5f-6a7b8c9d0e1f\r\n" +
		"\r\n")
	in := &inspector{}
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		in.scan(head)
		in.queue = in.queue[:0]
	}
}
