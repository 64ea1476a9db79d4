package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// httpMesh runs real apps behind a server sidecar and a client sidecar
// with one outbound listener per service plus the HTTP proxy listener.
type httpMesh struct {
	server, client *meshtest.Sidecar
	h1Hits         *atomic.Int64 // requests that reached the HTTP/1 app
	binds          map[string]string
	proxyURL       *url.URL
}

var meshServices = []string{"web", "h2", "grpc", "ws", "tcp", "down"}

func newHTTPMesh(t *testing.T, tr fallback.Mode) *httpMesh {
	t.Helper()
	m := meshtest.NewOver(t, tr)
	web := m.HTTPApp("web", meshtest.H1, nil)
	h2app := m.HTTPApp("h2", meshtest.H2C, nil)
	grpcApp := m.GRPCApp("grpc")
	tcpApp := m.TCPApp("tcp", nil)
	ws := m.HTTPApp("ws", meshtest.H1, websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	down := m.DownApp("down") // nothing listens there

	// These tests are about what crosses the mesh, not how fast a peer
	// connection comes up: with the 1 s dial and 3 s handshake defaults,
	// 400 requests racing to an empty pool under -race at load ~35 failed
	// 26 of 30 subtests in 15 runs, mostly on the one dial timed out
	// (QUIC "no recent network activity", TCP "i/o timeout") after which
	// the peer's back-off failed nearly all of them with 502, else on
	// the 5 s wait for a connection; the first gRPC call too. Nor are
	// they about telling a dead peer: over TCP, x/net/http2's PING check
	// at the idle timeout's settings (1.25 s + 3.75 s, which cannot tell
	// this process starved from a silent peer; h2tcp/liveness.go) closed
	// the shared connection under the 400 requests in 3 of 5 runs at
	// load ~30 ("http2: client connection lost", EOF), failing 176-200
	// of them; and the liveness watch (1 s), meant to tell, declared
	// the live server dead once in 9 runs at load ~23 ("sent nothing
	// for 1.123s with 200 requests or tunnels outstanding"), failing 309.
	// Waiting for a connection is a "this should not hang" wait here,
	// and so are the server sidecar's connect to the app (default 2 s:
	// 372 of the 400 timed out once at load ~34) and the client
	// sidecar's wait for a response header (default 30 s): a
	// 3 MiB gRPC unary, whose answer starts only after the app has read
	// it all, took 6-15 s under -race at load ~28 and passed 30 s 3 times
	// in 15 runs at load ~35.
	hang := time.Until(testkit.HangGuard(t))
	lim := transport.Limits{DialTimeout: hang, HandshakeTimeout: hang, IdleTimeout: hang, LivenessTimeout: hang}
	wait := outbound.Resilience{Default: outbound.ServicePolicy{ResponseHeaderTimeout: hang}}
	server := m.Start("server", meshtest.Spec{
		ID:                echoID,
		Limits:            lim,
		AppConnectTimeout: hang,
		Routes: map[string]string{
			"web":  web.URL("http"),
			"h2":   h2app.URL("h2c"),
			"grpc": grpcApp.URL(""), // learned: gRPC goes h2c
			"ws":   ws.URL(""),
			"tcp":  tcpApp.URL("tcp"),
			"down": down.URL("http"),
		},
	})
	m.Resolve("empty")
	var binds []meshtest.Bind
	for _, svc := range meshServices {
		binds = append(binds, meshtest.Bind{Service: svc})
	}
	client := m.Start("client", meshtest.Spec{ID: clientID, Limits: lim, ConnectTimeout: hang, Resilience: wait, Binds: binds, HTTPProxy: true, ClientsSpeakFirst: true})
	hm := &httpMesh{server: server, client: client, h1Hits: &web.Hits, binds: map[string]string{}}
	for _, svc := range meshServices {
		hm.binds[svc] = client.Bind(svc)
	}
	hm.proxyURL = client.ProxyURL()
	return hm
}

func TestHTTP1ThroughMesh(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		c := testkit.H1Client(t)
		base := "http://" + m.binds["web"]

		t.Run("GET keeps Host and gets verified identity", func(t *testing.T) {
			req, _ := http.NewRequest("GET", base+"/x?size=1000", nil)
			req.Host = "web.default.svc:8080"
			req.Header.Set("Quicmesh-Peer-Identity", "spiffe://test.local/forged")
			req.Header.Set("Quicmesh-Service", "tcp")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(1000)) {
				t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
			}
			if got := resp.Header.Get("Echo-Host"); got != "web.default.svc:8080" {
				t.Fatalf("app saw Host %q", got)
			}
			if got := resp.Header.Get("Echo-Peer-Identity"); got != clientID {
				t.Fatalf("app saw peer identity %q, want only the verified %q", got, clientID)
			}
			if got := resp.Header.Get("Echo-Proto"); got != "HTTP/1.1" {
				t.Fatalf("app spoke %q, want HTTP/1.1", got)
			}
		})

		t.Run("POST streams both ways byte-identical", func(t *testing.T) {
			// Lock-step first: each chunk must come back through both sidecars
			// before the next is sent, which only a path that streams the body
			// in both directions (never buffering it whole) can do. 2 MiB is
			// four times the initial QUIC stream window, so window updates are
			// needed each way. Then a bulk tail a little larger than the default
			// 8 MiB maximum stream window, written while the echo is read: the
			// sender must wait for window updates even once the window has
			// grown to its maximum. (It was 64 MiB in one go: no more assertion,
			// but 17 s under the race detector on a loaded machine.)
			const chunk, lockstep, bulk = 64 << 10, 2 << 20, 8<<20 + 12345
			payload := make([]byte, lockstep+bulk)
			rand.NewChaCha8([32]byte{7}).Read(payload)
			pr, pw := io.Pipe()
			req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "POST", base+"/", pr)
			req.Header.Set("Content-Type", "application/octet-stream")
			go pw.Write(payload[:chunk]) // Do returns once the echo starts
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := make([]byte, 0, len(payload))
			buf := make([]byte, chunk)
			for off := 0; off < lockstep; off += chunk {
				if off > 0 {
					if _, err := pw.Write(payload[off : off+chunk]); err != nil {
						t.Fatalf("writing chunk at %d: %v", off, err)
					}
				}
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					t.Fatalf("chunk at %d did not come back before the next was sent: %v", off, err)
				}
				got = append(got, buf...)
			}
			werr := make(chan error, 1)
			go func() {
				_, err := pw.Write(payload[lockstep:])
				pw.CloseWithError(err)
				werr <- err
			}()
			rest, err := io.ReadAll(resp.Body)
			got = append(got, rest...)
			if err != nil || len(got) != len(payload) || !bytes.Equal(got, payload) {
				t.Fatalf("echoed %d of %d bytes (%v), content equal=%v", len(got), len(payload), err, bytes.Equal(got, payload))
			}
			if err := <-werr; err != nil {
				t.Fatalf("writing the bulk tail: %v", err)
			}
		})

		t.Run("chunked request body and response trailers", func(t *testing.T) {
			pr, pw := io.Pipe()
			go func() {
				for i := range 10 {
					fmt.Fprintf(pw, "chunk-%d;", i)
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", base+"/?trailer=1", pr)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.HasPrefix(string(body), "chunk-0;") || !strings.HasSuffix(string(body), "chunk-9;") {
				t.Fatalf("body %q", body)
			}
			if got := resp.Trailer.Get("Echo-Trailer"); got != "done" {
				t.Fatalf("trailer Echo-Trailer = %q, want done (trailers %v)", got, resp.Trailer)
			}
		})

		t.Run("Expect 100-continue", func(t *testing.T) {
			// The client waits for the 100 Continue as long as the test may
			// run, so the body is sent early only if the mesh relayed it.
			tr := &http.Transport{ExpectContinueTimeout: time.Until(testkit.HangGuard(t))}
			defer tr.CloseIdleConnections()
			var got100 atomic.Bool
			ctx := httptrace.WithClientTrace(testkit.HangCtx(t), &httptrace.ClientTrace{Got100Continue: func() { got100.Store(true) }})
			req, _ := http.NewRequestWithContext(ctx, "POST", base+"/", strings.NewReader("after continue"))
			req.Header.Set("Expect", "100-continue")
			resp, err := (&http.Client{Transport: tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "after continue" {
				t.Fatalf("body %q", body)
			}
			if !got100.Load() {
				t.Fatal("the client never got a 100 Continue")
			}
		})

		t.Run("HEAD", func(t *testing.T) {
			resp, err := c.Head(base + "/?size=5000")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(body) != 0 {
				t.Fatalf("HEAD: status %d, %d body bytes", resp.StatusCode, len(body))
			}
		})

		t.Run("app status passes through", func(t *testing.T) {
			resp, err := c.Get(base + "/?status=418")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 418 {
				t.Fatalf("status %d, want 418", resp.StatusCode)
			}
		})
	})
}

func TestH2CThroughMesh(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		c := testkit.H2CClient(t)
		payload := bytes.Repeat([]byte("h2c"), 100000)
		resp, err := c.Post("http://"+m.binds["h2"]+"/?trailer=1", "text/plain", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Equal(body, payload) {
			t.Fatalf("echoed %d bytes, want %d", len(body), len(payload))
		}
		if resp.Proto != "HTTP/2.0" || resp.Header.Get("Echo-Proto") != "HTTP/2.0" {
			t.Fatalf("client proto %s, app proto %s; want HTTP/2.0 at both ends", resp.Proto, resp.Header.Get("Echo-Proto"))
		}
		if resp.Trailer.Get("Echo-Trailer") != "done" {
			t.Fatalf("trailers %v", resp.Trailer)
		}
		// HTTP/1 clients to an h2c-only app are upgraded to HTTP/3 and then
		// spoken to as h2c.
		resp, err = testkit.H1Client(t).Get("http://" + m.binds["h2"] + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Echo-Proto") != "HTTP/2.0" {
			t.Fatalf("h1 client to h2c app: status %d, app proto %q", resp.StatusCode, resp.Header.Get("Echo-Proto"))
		}
	})
}

func TestGRPCThroughMesh(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		cc := testkit.GRPCConn(t, m.binds["grpc"])
		ctx := testkit.HangCtx(t)

		t.Run("unary with metadata", func(t *testing.T) {
			var hdr, trl metadata.MD
			mctx := metadata.AppendToOutgoingContext(ctx, "x-user", "alice")
			got, err := echo.EchoUnary(mctx, cc, []byte("hello"), grpc.Header(&hdr), grpc.Trailer(&trl))
			if err != nil || string(got) != "hello" {
				t.Fatalf("EchoUnary = %q, %v", got, err)
			}
			if v := hdr.Get("echo-x-user"); len(v) != 1 || v[0] != "alice" {
				t.Fatalf("header metadata %v", hdr)
			}
			if v := trl.Get(echo.MDTrailer); len(v) != 1 || v[0] != "done" {
				t.Fatalf("trailer metadata %v", trl)
			}
			if v := hdr.Get(echo.MDPeerIdentity); len(v) != 1 || v[0] != clientID {
				t.Fatalf("app saw peer identity %v, want %s", v, clientID)
			}
		})
		t.Run("large unary", func(t *testing.T) {
			big := bytes.Repeat([]byte{0xab}, 3<<20)
			got, err := echo.EchoUnary(ctx, cc, big)
			if err != nil || !bytes.Equal(got, big) {
				t.Fatalf("3 MiB unary: %d bytes, %v", len(got), err)
			}
		})
		t.Run("server streaming", func(t *testing.T) {
			msgs, err := echo.StreamN(ctx, cc, []byte("s"), 100)
			if err != nil || len(msgs) != 100 {
				t.Fatalf("StreamN: %d msgs, %v", len(msgs), err)
			}
		})
		t.Run("client streaming", func(t *testing.T) {
			got, err := echo.Collect(ctx, cc, [][]byte{[]byte("a"), []byte("b"), []byte("c")})
			if err != nil || string(got) != "abc" {
				t.Fatalf("Collect = %q, %v", got, err)
			}
		})
		t.Run("bidi streaming interleaved", func(t *testing.T) {
			b, err := echo.Bidi(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 50 {
				msg := []byte(fmt.Sprintf("m%d", i))
				got, err := b.RoundTrip(msg)
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("round trip %d: %q %v", i, got, err)
				}
			}
			b.CloseSend()
			if _, err := b.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: %v, want EOF", err)
			}
		})
		t.Run("error status passes through", func(t *testing.T) {
			_, err := echo.EchoUnary(ctx, cc, []byte("status:NOT_FOUND"))
			if status.Code(err) != codes.NotFound {
				t.Fatalf("got %v, want NotFound", err)
			}
		})
		t.Run("deadline", func(t *testing.T) {
			dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer dcancel()
			_, err := echo.EchoUnary(dctx, cc, []byte("sleep:2s"))
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("got %v, want DeadlineExceeded", err)
			}
		})
		t.Run("cancellation", func(t *testing.T) {
			cctx, ccancel := context.WithCancel(ctx)
			b, err := echo.Bidi(cctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.RoundTrip([]byte("x")); err != nil {
				t.Fatal(err)
			}
			ccancel()
			if _, err := b.Recv(); status.Code(err) != codes.Canceled {
				t.Fatalf("after cancel: %v, want Canceled", err)
			}
		})
	})
}

func TestConcurrentRequestsShareOneQUICConnection(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		tr := &http.Transport{MaxConnsPerHost: 200, MaxIdleConnsPerHost: 200}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: time.Until(testkit.HangGuard(t))}
		// 200 app connections race to an empty pool, and each carries two
		// requests (keep-alive); the 1,000 it used to send added 5-15 s under
		// load and no assertion.
		const n = 400
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := c.Post("http://"+m.binds["web"]+"/", "text/plain", strings.NewReader(fmt.Sprint(i)))
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != fmt.Sprint(i) {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d body %q", resp.StatusCode, body))
				}
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d of %d requests failed; first: %v", failed.Load(), n, firstErr.Load())
		}
		if got := m.client.MeshConns(); got != 1 {
			t.Fatalf("%d QUIC connections, want 1", got)
		}
	})
}

// Each malformed request must be refused by the client's sidecar and
// never reach the app.
func TestMalformedRequestsRejected(t *testing.T) {
	m := newHTTPMesh(t, "")
	big := strings.Repeat("a", 1<<20)
	tests := []struct {
		name string
		raw  string
		want []int
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []int{400}},
		{"duplicate CL", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", []int{400}},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", []int{400}},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: web\r\nX-A: a\r\n  folded\r\n\r\n", []int{400}},
		{"NUL in header", "GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n", []int{400}},
		{"TE not chunked", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\n", []int{400, 501}},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", []int{400}},
		{"oversize headers", "GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + big + "\r\n\r\n", []int{431}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.h1Hits.Load()
			c, err := net.Dial("tcp", m.binds["web"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(testkit.HangGuard(t))
			go io.WriteString(c, tt.raw)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			resp.Body.Close()
			ok := false
			for _, s := range tt.want {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Fatalf("status %d, want one of %v", resp.StatusCode, tt.want)
			}
			time.Sleep(50 * time.Millisecond)
			if m.h1Hits.Load() != before {
				t.Fatal("the malformed request reached the app")
			}
		})
	}
}

func TestProxyErrors(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		proxied := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(m.proxyURL)}, Timeout: time.Until(testkit.HangGuard(t))}
		defer proxied.CloseIdleConnections()

		t.Run("unknown service is 503 naming the proxy", func(t *testing.T) {
			resp, err := proxied.Get("http://nosuch.svc/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 503 || !strings.Contains(resp.Header.Get("Quicmesh-Proxy-Error"), "outbound "+clientID) {
				t.Fatalf("status %d, Quicmesh-Proxy-Error %q", resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error"))
			}
		})
		t.Run("service without endpoints is UNAVAILABLE for gRPC", func(t *testing.T) {
			cc := testkit.GRPCConn(t, "passthrough:///empty", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", m.proxyURL.Host)
			}))
			_, err := echo.EchoUnary(testkit.HangCtx(t), cc, []byte("x"))
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable", err)
			}
		})
		t.Run("absolute-form through the HTTP proxy listener", func(t *testing.T) {
			resp, err := proxied.Get("http://web:8080/?size=10")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(10)) || resp.Header.Get("Echo-Host") != "web:8080" {
				t.Fatalf("status %d body %q host %q", resp.StatusCode, body, resp.Header.Get("Echo-Host"))
			}
		})
		t.Run("CONNECT through the HTTP proxy listener", func(t *testing.T) {
			c, err := net.Dial("tcp", m.proxyURL.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(testkit.HangGuard(t))
			fmt.Fprintf(c, "CONNECT tcp:7000 HTTP/1.1\r\nHost: tcp:7000\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			io.WriteString(c, "opaque bytes")
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(br)
			if err != nil || string(got) != "opaque bytes" {
				t.Fatalf("tunnel echoed %q, %v", got, err)
			}
		})
		t.Run("app down is 502 from the inbound side", func(t *testing.T) {
			resp, err := testkit.H1Client(t).Get("http://" + m.binds["down"] + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 502 || !strings.Contains(resp.Header.Get("Quicmesh-Proxy-Error"), "inbound "+echoID) {
				t.Fatalf("status %d, Quicmesh-Proxy-Error %q", resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error"))
			}
		})
	})
}

func TestWebSocketThroughMesh(t *testing.T) {
	meshtest.ForEachTransport(t, func(t *testing.T, mode fallback.Mode) {
		m := newHTTPMesh(t, mode)
		cfg, err := websocket.NewConfig("ws://ws/echo", "http://localhost/")
		if err != nil {
			t.Fatal(err)
		}
		raw, err := net.Dial("tcp", m.binds["ws"])
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(testkit.HangGuard(t))
		ws, err := websocket.NewClient(cfg, raw)
		if err != nil {
			t.Fatalf("websocket handshake through the mesh: %v", err)
		}
		for i := range 10 {
			msg := fmt.Sprintf("frame %d", i)
			if err := websocket.Message.Send(ws, msg); err != nil {
				t.Fatal(err)
			}
			var got string
			if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
				t.Fatalf("got %q %v, want %q", got, err, msg)
			}
		}
	})
}
