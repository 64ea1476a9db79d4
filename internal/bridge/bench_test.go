package bridge

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// sinkWriter is a ResponseWriter that keeps nothing and costs nothing,
// so a benchmark of Forward measures Forward. Like HTTP/2's and HTTP/3's
// writers it can flush but has no EnableFullDuplex.
type sinkWriter struct {
	h       http.Header
	flushes int
}

func (w *sinkWriter) Header() http.Header         { return w.h }
func (w *sinkWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *sinkWriter) WriteHeader(int)             {}
func (w *sinkWriter) Flush()                      { w.flushes++ }

// cannedBody is a response body that hands out its bytes and io.EOF in
// one Read, as net/http's client does for a body with a Content-Length.
type cannedBody struct{ r strings.Reader }

func (b *cannedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == nil && b.r.Len() == 0 {
		err = io.EOF
	}
	return n, err
}
func (b *cannedBody) Close() error { return nil }

// cannedTransport answers every request with the same small response,
// as the echo app of proxy/sidecar's benchmarks does.
type cannedTransport struct {
	resp http.Response
	body cannedBody
}

const cannedPayload = "hello, mesh\n"

func (t *cannedTransport) RoundTrip(*http.Request) (*http.Response, error) {
	t.body.r.Reset(cannedPayload)
	resp := t.resp
	resp.Body = &t.body
	return &resp, nil
}

// BenchmarkForward is one request through PrepareOutgoing and Forward,
// the per-request core of both sidecars' HTTP paths, with a canned
// upstream and a sink writer: proto is the protocol the request arrived
// over (the inbound sidecar's is HTTP/3; the outbound's HTTP/1.1 writer is
// net/http's, measured end to end in proxy/sidecar's BenchmarkHTTP1).
func BenchmarkForward(b *testing.B) {
	rt := &cannedTransport{resp: http.Response{
		StatusCode: http.StatusOK, ProtoMajor: 3,
		Header: http.Header{
			"Content-Type":   {"text/plain; charset=utf-8"},
			"Content-Length": {"12"},
			"Date":           {"Wed, 02 Dec 2026 16:00:00 GMT"},
		},
		ContentLength: int64(len(cannedPayload)),
	}}
	in, err := http.NewRequest(http.MethodGet, "https://web/", nil)
	if err != nil {
		b.Fatal(err)
	}
	in.Proto, in.ProtoMajor, in.ProtoMinor = "HTTP/3.0", 3, 0
	in.Header = http.Header{
		"Accept-Encoding":  {"gzip"},
		"User-Agent":       {"Go-http-client/1.1"},
		"Quicmesh-Service": {"web"},
	}
	benchForward(b, in, rt, "")
}

// benchForward forwards in through rt to a sink writer b.N times, as a
// sidecar does each request, and checks the gRPC status of each result.
func benchForward(b *testing.B, in *http.Request, rt http.RoundTripper, grpcStatus string) {
	w := &sinkWriter{h: http.Header{}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		out := PrepareOutgoing(ctx, in, "http", "127.0.0.1:8080")
		res, err := Forward(w, out, rt, Options{StripResponseMesh: true})
		if err != nil {
			b.Fatal(err)
		}
		if res.GRPCStatus != grpcStatus {
			b.Fatalf("grpc-status %q, want %q", res.GRPCStatus, grpcStatus)
		}
	}
	b.ReportMetric(float64(w.flushes)/float64(b.N), "flushes/op")
}

// grpcBody is a unary gRPC response body as HTTP/2 and HTTP/3 clients
// hand it out: the message in one Read, then io.EOF alone, with the
// trailers filled into resp.Trailer at the end (they arrive after the
// message, so the client cannot announce them).
type grpcBody struct {
	msg     []byte
	read    bool
	resp    *http.Response
	trailer http.Header
}

func (b *grpcBody) Read(p []byte) (int, error) {
	if !b.read {
		b.read = true
		return copy(p, b.msg), nil
	}
	b.resp.Trailer = b.trailer
	return 0, io.EOF
}
func (b *grpcBody) Close() error { return nil }

// grpcTransport answers every request with the same unary gRPC
// response: a 133-byte message (the sidecar benchmark's 128-byte echo)
// and the trailers grpc-go sends.
type grpcTransport struct {
	resp http.Response
	body grpcBody
}

func (t *grpcTransport) RoundTrip(*http.Request) (*http.Response, error) {
	resp := t.resp
	t.body.read, t.body.resp = false, &resp
	resp.Body = &t.body
	return &resp, nil
}

// BenchmarkForwardGRPC is BenchmarkForward for a unary gRPC call over
// HTTP/2 or HTTP/3 on both sides (proxy/sidecar's BenchmarkGRPCUnary
// does it end to end).
func BenchmarkForwardGRPC(b *testing.B) {
	benchForwardGRPC(b, http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {""}})
}

// BenchmarkForwardGRPCMetadata is BenchmarkForwardGRPC with the app's
// own trailer metadata as well: the five trailers the echo app of
// proxy/sidecar's benchmarks sends.
func BenchmarkForwardGRPCMetadata(b *testing.B) {
	benchForwardGRPC(b, http.Header{
		"Grpc-Status": {"0"}, "Grpc-Message": {""},
		"Echo-Trailer": {"done"}, "Echo-Local-Addr": {"127.0.0.1:8080"},
		"Echo-Authority": {"grpc"}, "Echo-Peer-Identity": {"spiffe://mesh/ns/default/sa/client"},
		"Echo-Quicmesh-Peer-Identity": {"spiffe://mesh/ns/default/sa/client"},
	})
}

func benchForwardGRPC(b *testing.B, trailer http.Header) {
	rt := &grpcTransport{
		resp: http.Response{StatusCode: http.StatusOK, ProtoMajor: 2, Header: http.Header{"Content-Type": {"application/grpc"}}},
		body: grpcBody{msg: make([]byte, 5+128), trailer: trailer},
	}
	in, err := http.NewRequest(http.MethodPost, "https://grpc/echo.Echo/Unary", strings.NewReader("x"))
	if err != nil {
		b.Fatal(err)
	}
	in.Proto, in.ProtoMajor, in.ProtoMinor = "HTTP/3.0", 3, 0
	in.ContentLength = -1
	in.Header = http.Header{
		"Content-Type":     {"application/grpc"},
		"Te":               {"trailers"},
		"User-Agent":       {"grpc-go/1.85.0"},
		"Grpc-Timeout":     {"9999m"},
		"Quicmesh-Service": {"grpc"},
	}
	benchForward(b, in, rt, "0")
}
