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
