package echo

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestTCPHalfClose(t *testing.T) {
	base := testkit.TakeBaseline()
	srv := StartTCP(testkit.Listen(t))
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	// Write everything, then half-close; the reply must be complete and
	// followed by EOF (the server's CloseWrite), not a reset.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo mismatch: got %d bytes, want %d", len(got), len(data))
	}
	c.Close()

	// A connection left open is closed by Close.
	c2, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c2, b); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	srv.Close() // idempotent
	base.Check(t)
}

func TestHTTPGetHeadersTrailers(t *testing.T) {
	base := testkit.TakeBaseline()
	for _, tc := range []struct {
		name  string
		start func(net.Listener) *Server
		cl    *http.Client
		proto string
	}{
		{"http1", StartHTTP1, testkit.H1Client(t), "HTTP/1.1"},
		{"h2c", StartH2C, testkit.H2CClient(t), "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.start(testkit.Listen(t))
			defer srv.Close()
			defer tc.cl.CloseIdleConnections()

			req, _ := http.NewRequest("GET", srv.URL()+"any/path", nil)
			req.Host = "svc.example"
			req.Header.Add(RequestPeerIdentity, "spiffe://td/a")
			resp, err := tc.cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "ok\n" || resp.StatusCode != 200 {
				t.Fatalf("GET: %d %q", resp.StatusCode, body)
			}
			if got := resp.Header.Get(HeaderProto); got != tc.proto {
				t.Errorf("%s = %q, want %q", HeaderProto, got, tc.proto)
			}
			if got := resp.Header.Get(HeaderHost); got != "svc.example" {
				t.Errorf("%s = %q", HeaderHost, got)
			}
			if got := resp.Header.Get(HeaderPeerIdentity); got != "spiffe://td/a" {
				t.Errorf("%s = %q", HeaderPeerIdentity, got)
			}

			resp, err = tc.cl.Get(srv.URL() + "?size=100000&trailer=1&status=503")
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 || !bytes.Equal(body, Body(100000)) {
				t.Fatalf("GET size: %d, %d bytes", resp.StatusCode, len(body))
			}
			if resp.Header.Get(HeaderPeerIdentity) != "" {
				t.Errorf("peer identity echoed without one")
			}
			if resp.Trailer.Get(TrailerDone) != "done" || resp.Trailer.Get(TrailerBytes) != "100000" {
				t.Errorf("trailers = %v", resp.Trailer)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			req, _ = http.NewRequestWithContext(ctx, "GET", srv.URL()+"?sleep=10s", nil)
			start := time.Now()
			if _, err := tc.cl.Do(req); err == nil {
				t.Errorf("sleep=10s answered within a 50ms deadline")
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("sleep did not honour the client going away")
			}
		})
	}
	base.Check(t)
}

func TestH2CRejectsHTTP1(t *testing.T) {
	srv := StartH2C(testkit.Listen(t))
	defer srv.Close()
	cl := testkit.H1Client(t)
	defer cl.CloseIdleConnections()
	resp, err := cl.Get(srv.URL())
	if err == nil {
		resp.Body.Close()
		if resp.Header.Get(HeaderProto) == "HTTP/1.1" {
			t.Fatalf("h2c server answered HTTP/1.1")
		}
	}
}

// TestHTTPStreamingPostEcho sends 8 MiB through a pipe in 64 KiB chunks and
// reads each chunk's echo before sending the next: this only completes if
// the server streams, and the result must be byte-identical.
func TestHTTPStreamingPostEcho(t *testing.T) {
	base := testkit.TakeBaseline()
	for _, tc := range []struct {
		name  string
		start func(net.Listener) *Server
		cl    *http.Client
	}{
		{"http1", StartHTTP1, testkit.H1Client(t)},
		{"h2c", StartH2C, testkit.H2CClient(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.start(testkit.Listen(t))
			defer srv.Close()
			defer tc.cl.CloseIdleConnections()

			const total, chunk = 8 << 20, 64 << 10
			data := make([]byte, total)
			rand.Read(data)
			pr, pw := io.Pipe()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL()+"?trailer=1", pr)
			req.Header.Set("Content-Type", "application/x-test")

			// The first chunk must be written before Do can return.
			go pw.Write(data[:chunk])
			resp, err := tc.cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "application/x-test" {
				t.Errorf("Content-Type = %q", ct)
			}
			got := make([]byte, 0, total)
			buf := make([]byte, chunk)
			for off := 0; off < total; off += chunk {
				if off > 0 {
					if _, err := pw.Write(data[off : off+chunk]); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatalf("at %d: %v", off, err)
				}
				got = append(got, buf...)
			}
			pw.Close()
			rest, err := io.ReadAll(resp.Body)
			if err != nil || len(rest) != 0 {
				t.Fatalf("tail: %d bytes, %v", len(rest), err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("echo differs")
			}
			if resp.Trailer.Get(TrailerBytes) != "8388608" {
				t.Errorf("trailer %s = %q", TrailerBytes, resp.Trailer.Get(TrailerBytes))
			}
		})
	}
	base.Check(t)
}

func TestGRPC(t *testing.T) {
	base := testkit.TakeBaseline()
	srv := StartGRPC(testkit.Listen(t))
	conn, err := Dial(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		var hdr, trl metadata.MD
		octx := metadata.AppendToOutgoingContext(ctx, "quicmesh-peer-identity", "spiffe://td/b", "x-foo", "bar")
		out, err := EchoUnary(octx, conn, []byte("hello"), grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil || string(out) != "hello" {
			t.Fatalf("EchoUnary = %q, %v", out, err)
		}
		if got := hdr.Get(MDPeerIdentity); len(got) != 1 || got[0] != "spiffe://td/b" {
			t.Errorf("header %s = %v", MDPeerIdentity, got)
		}
		if got := hdr.Get("echo-x-foo"); len(got) != 1 || got[0] != "bar" {
			t.Errorf("header echo-x-foo = %v", got)
		}
		if got := hdr.Get(MDAuthority); len(got) != 1 || got[0] == "" {
			t.Errorf("header %s = %v", MDAuthority, got)
		}
		if got := hdr.Get("content-type"); len(got) != 1 || got[0] != "application/grpc+quicmesh-raw" {
			t.Errorf("content-type = %v", got)
		}
		if got := trl.Get(MDTrailer); len(got) != 1 || got[0] != "done" {
			t.Errorf("trailer = %v", trl)
		}
		if out, err := EchoUnary(ctx, conn, nil); err != nil || len(out) != 0 {
			t.Errorf("empty echo = %q, %v", out, err)
		}
	})

	t.Run("status", func(t *testing.T) {
		for msg, want := range map[string]codes.Code{
			"status:UNAVAILABLE:backend down": codes.Unavailable,
			"status:5":                        codes.NotFound,
			"status:permission_denied":        codes.PermissionDenied,
			"status:nonsense":                 codes.InvalidArgument,
		} {
			_, err := EchoUnary(ctx, conn, []byte(msg))
			if status.Code(err) != want {
				t.Errorf("%q: got %v, want %v", msg, err, want)
			}
		}
		_, err := EchoUnary(ctx, conn, []byte("status:UNAVAILABLE:backend down"))
		if s, _ := status.FromError(err); s.Message() != "backend down" {
			t.Errorf("message = %q", s.Message())
		}
		b, err := Bidi(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := b.RoundTrip([]byte("one")); err != nil || string(out) != "one" {
			t.Fatalf("bidi = %q %v", out, err)
		}
		if _, err := b.RoundTrip([]byte("status:RESOURCE_EXHAUSTED")); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("bidi status: %v", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := EchoUnary(dctx, conn, []byte("sleep:10s"))
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("deadline not honoured")
		}
		if out, err := EchoUnary(ctx, conn, []byte("sleep:1ms")); err != nil || string(out) != "sleep:1ms" {
			t.Errorf("short sleep: %q %v", out, err)
		}
	})

	t.Run("streams", func(t *testing.T) {
		msgs, err := StreamN(ctx, conn, []byte("abc"), 5)
		if err != nil || len(msgs) != 5 || string(msgs[4]) != "abc" {
			t.Fatalf("StreamN = %q, %v", msgs, err)
		}
		all, err := Collect(ctx, conn, [][]byte{[]byte("a"), []byte("bc"), []byte("d")})
		if err != nil || string(all) != "abcd" {
			t.Fatalf("Collect = %q, %v", all, err)
		}
		b, err := Bidi(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			p := []byte(strings.Repeat("z", i))
			out, err := b.RoundTrip(p)
			if err != nil || !bytes.Equal(out, p) {
				t.Fatalf("round trip %d: %q %v", i, out, err)
			}
		}
		b.CloseSend()
		if _, err := b.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend: %v", err)
		}
		if b.Trailer().Get(MDTrailer)[0] != "done" {
			t.Errorf("bidi trailer = %v", b.Trailer())
		}
	})

	conn.Close()
	srv.Close()
	base.Check(t)
}
