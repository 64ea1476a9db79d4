package inbound

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/h2client"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// grpcMsg is a 128-byte gRPC message with its 5-byte prefix, the size
// proxy/sidecar's BenchmarkGRPCUnary sends.
var grpcMsg = append([]byte{0, 0, 0, 0, 128}, strings.Repeat("x", 128)...)

// startRawH2CApp serves h2c the way grpc-go answers a unary call, at as
// little cost as x/net's Framer allows, so a benchmark of a client
// against it measures the client: each request that ends gets its
// response HEADERS, one DATA frame and the trailers in one write.
// SETTINGS and PINGs are acknowledged; the connection window is given
// back as data arrives.
func startRawH2CApp(tb testing.TB) string {
	return serveConns(tb, func(c net.Conn) { serveRawH2C(c) })
}

// serveConns serves each connection to a loopback listener on a
// goroutine of its own; the listener and the connections are closed, and
// the goroutines waited for, at the end of the test.
func serveConns(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	tb.Cleanup(func() {
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed { // accepted as the test ended
				mu.Unlock()
				c.Close()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { serve(c) })
		}
	})
	return ln.Addr().String()
}

func serveRawH2C(c net.Conn) error {
	defer c.Close()
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return err
	}
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	block := func(fields ...string) []byte {
		hbuf.Reset()
		for i := 0; i < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return hbuf.Bytes()
	}
	respond := func(id uint32) error {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
			BlockFragment: block(":status", "200", "content-type", "application/grpc")})
		fr.WriteData(id, false, grpcMsg)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true,
			BlockFragment: block("grpc-status", "0", "grpc-message", "")})
		return bw.Flush()
	}
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				err = bw.Flush()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
				err = bw.Flush()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				err = respond(f.StreamID)
			}
		case *http2.DataFrame:
			if n := len(f.Data()); n > 0 {
				fr.WriteWindowUpdate(0, uint32(n))
			}
			if f.StreamEnded() {
				err = respond(f.StreamID)
			} else {
				err = bw.Flush()
			}
		}
		if err != nil {
			return err
		}
	}
}

// eofBody hands out its bytes and io.EOF in one Read, as quic-go's
// HTTP/3 request body does for a message that arrived with the stream's
// end.
type eofBody struct{ r bytes.Reader }

func (b *eofBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == nil && b.r.Len() == 0 {
		err = io.EOF
	}
	return n, err
}
func (b *eofBody) Close() error { return nil }

// BenchmarkAppH2C is one unary gRPC exchange with an h2c app, one at a
// time on one connection, the app answering at once:
//
//   - pool: h2cPool, net/http's ClientConn over x/net/http2's client
//     (until 2026-12 net/http's bundled copy), now only h2client's
//     fallback;
//   - lean: h2client, what the gRPC path uses;
//   - floor: the same bytes exchanged with x/net's Framer and hpack on the
//     caller's goroutine (request HEADERS and DATA in one write, response
//     frames read by the caller): what a purpose-built client could not
//     go below. Not a client (no multiplexing, no flow control beyond
//     giving the window back).
func BenchmarkAppH2C(b *testing.B) {
	addr := startRawH2CApp(b)
	for _, client := range []struct {
		name string
		new  func() (rt func(*http.Request) (*http.Response, error), close func())
	}{
		{"pool", func() (func(*http.Request) (*http.Response, error), func()) {
			p := newH2CPool((&net.Dialer{}).DialContext, DefaultAppStreamWindow, DefaultAppStreamsPerConn)
			return p.RoundTrip, p.Close
		}},
		{"lean", func() (func(*http.Request) (*http.Response, error), func()) {
			c := h2client.New(h2client.Config{Dial: (&net.Dialer{}).DialContext, StreamWindow: DefaultAppStreamWindow, MaxStreams: DefaultAppStreamsPerConn})
			return c.RoundTrip, func() { c.Close() }
		}},
	} {
		b.Run(client.name, func(b *testing.B) {
			roundTrip, closeClient := client.new()
			defer closeClient()
			body := &eofBody{}
			buf := make([]byte, 512)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				body.r.Reset(grpcMsg)
				req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+addr+"/echo.Echo/Unary", body)
				if err != nil {
					b.Fatal(err)
				}
				req.ContentLength = -1
				req.Header = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}, "Grpc-Timeout": {"9999m"}}
				resp, err := roundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				n, err := readFull(resp.Body, buf)
				resp.Body.Close()
				if err != nil || n != len(grpcMsg) || resp.Trailer.Get("Grpc-Status") != "0" {
					b.Fatalf("read %d bytes, %v, trailer %v", n, err, resp.Trailer)
				}
			}
		})
	}
	b.Run("floor", func(b *testing.B) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		br, bw := bufio.NewReader(c), bufio.NewWriter(c)
		fr := http2.NewFramer(bw, br)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var hbuf bytes.Buffer
		enc := hpack.NewEncoder(&hbuf)
		bw.WriteString(http2.ClientPreface)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: DefaultAppStreamWindow})
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
		id, unacked := uint32(1), 0
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			hbuf.Reset()
			for _, f := range [...]hpack.HeaderField{
				{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
				{Name: ":authority", Value: addr}, {Name: ":path", Value: "/echo.Echo/Unary"},
				{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
				{Name: "grpc-timeout", Value: "9999m"},
			} {
				enc.WriteField(f)
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: hbuf.Bytes()})
			fr.WriteData(id, true, grpcMsg)
			if err := bw.Flush(); err != nil {
				b.Fatal(err)
			}
			var got int
			var status string
		read:
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					b.Fatal(err)
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						fr.WriteSettingsAck()
					}
				case *http2.PingFrame:
					if !f.IsAck() {
						fr.WritePing(true, f.Data)
					}
				case *http2.DataFrame:
					got += len(f.Data())
					unacked += len(f.Data())
				case *http2.MetaHeadersFrame:
					if f.StreamEnded() {
						for _, hf := range f.RegularFields() {
							if hf.Name == "grpc-status" {
								status = hf.Value
							}
						}
						break read
					}
				}
			}
			if unacked > 16<<10 {
				fr.WriteWindowUpdate(0, uint32(unacked))
				unacked = 0
			}
			if got != len(grpcMsg) || status != "0" {
				b.Fatalf("got %d bytes, status %q", got, status)
			}
			id += 2
		}
	})
}

// readFull reads r to its end into buf, which must be large enough.
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil || n == len(buf) {
			return n, err
		}
	}
}

// reportCPU reports the process's CPU time (user and system: client and
// app both) per operation, which the machine's load inflates far less
// than ns/op. Call the function it returns when the loop has ended.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64((cpu()-start).Microseconds())/float64(b.N), "cpu-us/op")
	}
}
