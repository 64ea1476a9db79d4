package outbound

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// echoPeer answers with the request's path in X-Path, its protocol as
// the sidecar saw it in X-Proto, the status from ?status=, and the
// request body (or "body of <path>") as the response body.
func echoPeer(r *http.Request) (*http.Response, error) {
	status := 200
	if s := r.URL.Query().Get("status"); s != "" {
		status, _ = strconv.Atoi(s)
	}
	body := "body of " + r.URL.Path
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		if len(b) > 0 {
			body = string(b)
		}
	}
	resp := textResponse(r, status, body)
	resp.Header.Set("X-Path", r.URL.Path)
	return resp, nil
}

// h1Proxy serves "web" on a loopback listener with cfg's timeouts; the
// peer answers with rt.
func h1Proxy(t *testing.T, cfg Config, rt func(*http.Request) (*http.Response, error)) (*Proxy, string) {
	t.Helper()
	cfg.Discovery = &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}}
	cfg.Peers = &fakePeers{newConn: func(string) *fakeConn { return &fakeConn{alive: true, roundTrip: rt} }}
	p := New(cfg)
	ln := testkit.Listen(t)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln, "web", false) }()
	t.Cleanup(func() {
		p.Close()
		ln.Close()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return p, ln.Addr().String()
}

func dialApp(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(testkit.HangGuard(t))
	return c, bufio.NewReader(c)
}

// Keep-alive, pipelining (all requests in one write, answered in order),
// HEAD, 204, a chunked upload and Connection: close, on one connection
// served by the lean server.
func TestLeanH1PipelinedRequests(t *testing.T) {
	testkit.CheckLeaks(t)
	_, addr := h1Proxy(t, Config{}, echoPeer)
	c, br := dialApp(t, addr)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: web\r\n\r\n"+
		"HEAD /b HTTP/1.1\r\nHost: web\r\n\r\n"+
		"GET /c?status=204 HTTP/1.1\r\nHost: web\r\n\r\n"+
		"POST /d HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n"+
		"POST /e HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc"+
		"GET /f HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
	want := []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/a", 200, "body of /a"},
		{"HEAD", "/b", 200, ""},
		{"GET", "/c", 204, ""},
		{"POST", "/d", 200, "hello world"},
		{"POST", "/e", 200, "abc"},
		{"GET", "/f", 200, "body of /f"},
	}
	for i, w := range want {
		resp, err := http.ReadResponse(br, &http.Request{Method: w.method})
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response %d body: %v", i, err)
		}
		if resp.StatusCode != w.status || string(body) != w.body || resp.Header.Get("X-Path") != w.path {
			t.Fatalf("response %d: %d %q X-Path %q, want %d %q %q", i, resp.StatusCode, body, resp.Header.Get("X-Path"), w.status, w.body, w.path)
		}
		if last := i == len(want)-1; resp.Close != last {
			t.Fatalf("response %d: Close %v", i, resp.Close)
		}
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("connection still open after Connection: close (%d, %v)", n, err)
	}
}

// What the lean server declines goes to net/http from the declined head
// on, with the bytes already read: a head larger than the lean buffer in
// the middle of a keep-alive connection, the requests after it, an
// HTTP/1.0 request. A head beyond MaxHeaderBytes is still refused
// with 431, and a malformed one with 400.
func TestLeanH1FallsBackMidConnection(t *testing.T) {
	testkit.CheckLeaks(t)
	_, addr := h1Proxy(t, Config{}, echoPeer)
	c, br := dialApp(t, addr)
	big := strings.Repeat("b", 6000)
	// (The HTTP/1.0 request comes last: net/http closes after it, since
	// the streamed response has no Content-Length.)
	io.WriteString(c, "GET /lean HTTP/1.1\r\nHost: web\r\n\r\n"+
		"GET /big HTTP/1.1\r\nHost: web\r\nX-Big: "+big+"\r\n\r\n"+
		"GET /after HTTP/1.1\r\nHost: web\r\n\r\n"+
		"GET /old HTTP/1.0\r\nHost: web\r\n\r\n")
	for i, path := range []string{"/lean", "/big", "/after", "/old"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("X-Path") != path || string(body) != "body of "+path {
			t.Fatalf("response %d: %d %q X-Path %q, want %s", i, resp.StatusCode, body, resp.Header.Get("X-Path"), path)
		}
	}

	for _, tt := range []struct {
		name, raw string
		status    int
	}{
		{"oversize", "GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + strings.Repeat("b", 80<<10) + "\r\n\r\n", 431},
		{"CL and TE after a good request", "GET /ok HTTP/1.1\r\nHost: web\r\n\r\nPOST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\nHost: web\n\n", 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialApp(t, addr)
			go io.WriteString(c, tt.raw)
			if strings.HasPrefix(tt.raw, "GET /ok") {
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("first request: %v %v", resp, err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

// A slow app client: a head not complete within HeaderTimeout, and a
// keep-alive connection idle for IdleTimeout, are closed.
func TestLeanH1Timeouts(t *testing.T) {
	testkit.CheckLeaks(t)
	cfg := Config{Options: Options{HeaderTimeout: 100 * time.Millisecond, IdleTimeout: 150 * time.Millisecond}}
	_, addr := h1Proxy(t, cfg, echoPeer)

	t.Run("header", func(t *testing.T) {
		c, br := dialApp(t, addr)
		start := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\nHo")
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("the server answered a partial head")
		} else if isTimeout(err) {
			t.Fatal("the connection was not closed")
		}
		if d := time.Since(start); d < cfg.HeaderTimeout {
			t.Fatalf("closed after %v, before HeaderTimeout %v", d, cfg.HeaderTimeout)
		}
	})
	t.Run("idle", func(t *testing.T) {
		c, br := dialApp(t, addr)
		// The server's idle clock starts when it has written the
		// response, before this side has read it; it cannot start before
		// the request was sent, so that is the only sound lower bound.
		start := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("unexpected bytes")
		} else if isTimeout(err) {
			t.Fatal("the idle connection was not closed")
		}
		if d := time.Since(start); d < cfg.IdleTimeout {
			t.Fatalf("closed after %v, before IdleTimeout %v", d, cfg.IdleTimeout)
		}
	})
}

// isTimeout reports a read ended by the test's own hang guard, not by
// the server.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// An app that goes away while its request is in flight cancels the
// request (its context ends), as with net/http's background read.
func TestLeanH1DisconnectCancels(t *testing.T) {
	testkit.CheckLeaks(t)
	started, cancelled := make(chan struct{}), make(chan struct{})
	_, addr := h1Proxy(t, Config{}, func(r *http.Request) (*http.Response, error) {
		close(started)
		<-r.Context().Done()
		close(cancelled)
		return nil, r.Context().Err()
	})
	c, _ := dialApp(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	<-started
	c.Close()
	select {
	case <-cancelled:
	case <-testkit.HangCtx(t).Done():
		t.Fatal("the request was not cancelled when the app closed its connection")
	}
}

// Shutdown closes an idle keep-alive connection and returns.
func TestLeanH1Shutdown(t *testing.T) {
	testkit.CheckLeaks(t)
	p, addr := h1Proxy(t, Config{}, echoPeer)
	c, br := dialApp(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	ctx, cancel := context.WithCancel(testkit.HangCtx(t))
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("unexpected bytes after Shutdown")
	}
}
