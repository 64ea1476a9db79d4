package h1client

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// benchApp is a canned keep-alive HTTP/1.1 app on loopback that answers
// every GET with a small response, without net/http's server, so the
// benchmark measures the client side.
func benchApp(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	resp := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Thu, 03 Dec 2026 08:00:00 GMT\r\nContent-Length: 13\r\n\r\nHello, world!"
	go serveRaw(ln, func(string) (string, bool) { return resp, true })
	return ln.Addr().String()
}

// BenchmarkRoundTrip is one GET on a keep-alive connection, as the
// inbound sidecar sends it (cancellable context, an httptrace hook for
// 1xx, a body read to the end), with this client and with net/http's
// Transport configured as the inbound sidecar configured it.
func BenchmarkRoundTrip(b *testing.B) {
	addr := benchApp(b)
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	std := &http.Transport{
		DialContext: dialer.DialContext, MaxIdleConns: 1024, MaxIdleConnsPerHost: 256,
		IdleConnTimeout: 90 * time.Second, DisableCompression: true, MaxResponseHeaderBytes: 64 << 10,
	}
	lean := New(Config{Dial: dialer.DialContext, MaxIdleConns: 1024, MaxIdleConnsPerHost: 256,
		IdleConnTimeout: 90 * time.Second, MaxResponseHeaderBytes: 64 << 10, Fallback: std})
	b.Cleanup(func() { lean.CloseIdleConnections(); std.CloseIdleConnections() })
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		h3   bool // the GET has a body of unknown length that is empty, as from HTTP/3
	}{{"lean", lean, false}, {"net-http", std, false}, {"lean-h3-get", lean, true}, {"net-http-h3-get", std, true}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/x", nil)
			req.Header.Set("Quicmesh-Peer-Identity", "spiffe://example.org/ns/default/sa/client")
			buf := make([]byte, 512)
			b.ReportAllocs()
			for b.Loop() {
				if tc.h3 {
					req.Body, req.ContentLength = emptyBody{}, -1
				}
				resp, err := tc.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				for {
					_, err := resp.Body.Read(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				resp.Body.Close()
			}
		})
	}
}

type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }
