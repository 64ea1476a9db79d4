package outbound

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/discovery"
)

// BenchmarkH2GRPCUnary is one gRPC unary call from an h2c client through
// the outbound's app-side HTTP/2 server (x/net's, behind h2guard) and
// the whole HTTP path, to a peer that answers at once like the far
// sidecar does for grpc-go (HEADERS, one message, trailers at the body's
// end): the client sidecar's HTTP/2 work without quic-go, 8 calls in
// flight on one connection as in proxy/sidecar's BenchmarkGRPCUnary.
// cpu-us/op is the process's CPU (client and proxy) per call.
func BenchmarkH2GRPCUnary(b *testing.B) {
	msg := append([]byte{0, 0, 0, 0, 128}, bytes.Repeat([]byte("x"), 128)...)
	peers := &fakePeers{newConn: func(string) *fakeConn {
		return &fakeConn{alive: true, roundTrip: func(out *http.Request) (*http.Response, error) {
			if out.Body != nil {
				io.Copy(io.Discard, out.Body)
			}
			resp := &http.Response{StatusCode: 200, ProtoMajor: 3, Request: out,
				Header: http.Header{"Content-Type": {"application/grpc"}, "Grpc-Accept-Encoding": {"gzip"}}}
			resp.Body = &trailedBody{r: bytes.NewReader(msg), resp: resp}
			return resp, nil
		}}
	}}
	p := New(Config{
		Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}},
		Peers:     peers,
	})
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.Serve(ln, "web", false)
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	url := "http://" + ln.Addr().String() + "/echo.Echo/Unary"
	call := func() error {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(msg))
		req.Header = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "User-Agent": {"grpc-go/1.85.0"}}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.Trailer.Get("Grpc-Status") != "0" {
			b.Errorf("grpc-status %q, trailers %v", resp.Trailer.Get("Grpc-Status"), resp.Trailer)
		}
		return nil
	}
	if err := call(); err != nil { // the connection, before the clock starts
		b.Fatal(err)
	}
	cpu0 := processCPU(b)
	b.ReportAllocs()
	b.SetParallelism(4) // 8 calls in flight on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// trailedBody is a response body whose trailer (grpc-status 0) arrives
// with its end, as HTTP clients fill resp.Trailer.
type trailedBody struct {
	r    io.Reader
	resp *http.Response
}

func (t *trailedBody) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		t.resp.Trailer = http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {""}}
	}
	return n, err
}

func (t *trailedBody) Close() error { return nil }

// processCPU is the user and system CPU time of this process so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPreGrown is a handler that needs ~10 KiB of stack in 20
// frames (as the outbound path does) run on a new goroutine per call, as
// x/net's HTTP/2 server runs each stream: as it is (the stack grows deep
// in the path) and behind preGrown (grown once, before the path).
func BenchmarkPreGrown(b *testing.B) {
	deep := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { deepFrames(20) })
	for _, tc := range []struct {
		name string
		h    http.Handler
	}{{"plain", deep}, {"preGrown", preGrown(deep)}} {
		b.Run(tc.name, func(b *testing.B) {
			done := make(chan struct{})
			b.ReportAllocs()
			for b.Loop() {
				go func() {
					tc.h.ServeHTTP(nil, nil)
					done <- struct{}{}
				}()
				<-done
			}
		})
	}
}

// deepFrames uses n frames of ~500 bytes of stack.
//
//go:noinline
func deepFrames(n int) byte {
	var frame [480]byte
	touch(frame[:])
	if n == 0 {
		return frame[0]
	}
	return deepFrames(n-1) + frame[1]
}
