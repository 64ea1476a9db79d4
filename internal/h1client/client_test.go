package h1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// appServer is a net/http app on loopback that counts the connections
// it accepted.
type appServer struct {
	addr  string
	conns atomic.Int32
	srv   *http.Server
}

func startApp(t *testing.T, h http.HandlerFunc) *appServer {
	t.Helper()
	ln := testkit.Listen(t)
	a := &appServer{addr: ln.Addr().String()}
	a.srv = &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			a.conns.Add(1)
		}
	}}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

func get(t *testing.T, c *Client, ctx context.Context, method, url string, body io.Reader) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// TestRequests: what an app (net/http's server) sees of the requests
// this client writes, and that keep-alive connections are reused.
func TestRequests(t *testing.T) {
	testkit.CheckLeaks(t)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s cl=%d te=%v body=%q trailer=%v close=%v ua=%q",
			r.Method, r.RequestURI, r.Host, r.ContentLength, r.TransferEncoding, b, r.Trailer, r.Close, r.Header["User-Agent"])
	})
	c := newTestClient(t, Config{MaxIdleConnsPerHost: 4})
	ctx := testkit.HangCtx(t)
	base := "http://" + app.addr

	tests := []struct {
		name string
		req  func() *http.Request
		want string
	}{
		{"GET", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "GET", base+"/a?b=c", nil)
			r.Host = "svc.example"
			return r
		}, `GET /a?b=c host=svc.example cl=0 te=[] body="" trailer=map[] close=false ua=[]`},
		{"POST with length", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "POST", base+"/p", strings.NewReader("hello"))
			return r
		}, `POST /p host=` + app.addr + ` cl=5 te=[] body="hello" trailer=map[] close=false ua=[]`},
		{"POST without body", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "POST", base+"/p", nil)
			return r
		}, `POST /p host=` + app.addr + ` cl=0 te=[] body="" trailer=map[] close=false ua=[]`},
		{"POST chunked with trailers", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "POST", base+"/p", io.NopCloser(strings.NewReader("streamed")))
			r.ContentLength = -1
			r.Trailer = http.Header{"X-Sum": nil}
			r.Body = &fillTrailer{ReadCloser: r.Body, t: r.Trailer}
			return r
		}, `POST /p host=` + app.addr + ` cl=-1 te=[chunked] body="streamed" trailer=map[X-Sum:[7]] close=false ua=[]`},
		{"GET with an empty body of unknown length", func() *http.Request {
			// What an HTTP/3 GET looks like: a body, no length, nothing in it.
			r, _ := http.NewRequestWithContext(ctx, "GET", base+"/g", io.NopCloser(strings.NewReader("")))
			r.ContentLength = -1
			return r
		}, `GET /g host=` + app.addr + ` cl=0 te=[] body="" trailer=map[] close=false ua=[]`},
		{"DELETE with a body of unknown length", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "DELETE", base+"/d", io.NopCloser(strings.NewReader("x")))
			r.ContentLength = -1
			return r
		}, `DELETE /d host=` + app.addr + ` cl=-1 te=[chunked] body="x" trailer=map[] close=false ua=[]`},
		{"empty user agent means none", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "GET", base+"/n", nil)
			r.Header["User-Agent"] = []string{""}
			return r
		}, `GET /n host=` + app.addr + ` cl=0 te=[] body="" trailer=map[] close=false ua=[]`},
		{"user agent and close", func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, "GET", base+"/u", nil)
			r.Header.Set("User-Agent", "app/1")
			r.Close = true
			return r
		}, `GET /u host=` + app.addr + ` cl=0 te=[] body="" trailer=map[] close=true ua=["app/1"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.RoundTrip(tt.req())
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != tt.want {
				t.Errorf("app saw %q (%v)\nwant        %q", b, err, tt.want)
			}
		})
	}
	// Sequential requests share a connection, except after the close.
	if n := app.conns.Load(); n != 1 {
		t.Errorf("app accepted %d connections for sequential requests, want 1", n)
	}
}

type fillTrailer struct {
	io.ReadCloser
	t http.Header
}

func (f *fillTrailer) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err == io.EOF {
		f.t.Set("X-Sum", "7")
	}
	return n, err
}

// TestInvalidRequestsNotSent: what would split the request is refused
// before anything is written.
func TestInvalidRequestsNotSent(t *testing.T) {
	testkit.CheckLeaks(t)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newTestClient(t, Config{})
	for name, mod := range map[string]func(r *http.Request){
		"newline in value": func(r *http.Request) { r.Header.Set("X-A", "a\r\nX-B: b") },
		"bad field name":   func(r *http.Request) { r.Header["X A"] = []string{"1"} },
		"bad host":         func(r *http.Request) { r.Host = "a b" },
		"bad method":       func(r *http.Request) { r.Method = "GE T" },
		"CTL in URI":       func(r *http.Request) { r.URL.RawQuery = "a=\x01" },
	} {
		r, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "http://"+app.addr+"/", nil)
		mod(r)
		if _, err := c.RoundTrip(r); err == nil {
			t.Errorf("%s: sent", name)
		}
	}
}

// TestFallback: requests this client does not do go to the fallback.
func TestFallback(t *testing.T) {
	var got []string
	var mu sync.Mutex
	fb := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.String())
		mu.Unlock()
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	})
	c := newTestClient(t, Config{Fallback: fb})
	ctx := testkit.HangCtx(t)
	mk := func(method, url string, h http.Header) *http.Request {
		r, _ := http.NewRequestWithContext(ctx, method, url, nil)
		for k, v := range h {
			r.Header[k] = v
		}
		return r
	}
	for _, r := range []*http.Request{
		mk("GET", "http://127.0.0.1:1/ws", http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}),
		mk("CONNECT", "http://127.0.0.1:1", nil),
		mk("POST", "http://127.0.0.1:1/e", http.Header{"Expect": {"100-continue"}}),
		mk("GET", "https://127.0.0.1:1/tls", nil),
		mk("GET", "http://u:p@127.0.0.1:1/creds", nil),
		mk("GET", "http://127.0.0.1/noport", nil),
	} {
		if _, err := c.RoundTrip(r); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.URL, err)
		}
	}
	if len(got) != 6 {
		t.Errorf("fallback got %d requests, want 6: %v", len(got), got)
	}
}

// TestFullDuplex: the app answers and streams while the request body is
// still coming, line by line; nothing waits for the whole body.
func TestFullDuplex(t *testing.T) {
	testkit.CheckLeaks(t)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.WriteHeader(200)
		rc.Flush()
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(w, "echo "+line)
			rc.Flush()
		}
	})
	c := newTestClient(t, Config{})
	for _, length := range []int64{-1, 12} { // chunked, and a length sent in pieces
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "POST", "http://"+app.addr+"/", pr)
		req.ContentLength = length
		done := make(chan struct{})
		var resp *http.Response
		var err error
		go func() { resp, err = c.RoundTrip(req); close(done) }()
		io.WriteString(pw, "one\n")
		<-done // the response head came before the body ended
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		for _, w := range []string{"one", "two", "six"} {
			if w != "one" {
				io.WriteString(pw, w+"\n")
			}
			line, err := br.ReadString('\n')
			if err != nil || line != "echo "+w+"\n" {
				t.Fatalf("length %d: read %q, %v; want the echo of %q", length, line, err, w)
			}
		}
		pw.Close()
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Errorf("length %d: after the body ended: %q, %v", length, rest, err)
		}
		resp.Body.Close()
	}
}

// TestAnswerBeforeBody: an app that answers without reading the body
// (a 413, say) gets its answer through; the body writer ends.
func TestAnswerBeforeBody(t *testing.T) {
	testkit.CheckLeaks(t)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	})
	c := newTestClient(t, Config{})
	pr, pw := io.Pipe()
	defer pw.Close()
	resp, _, err := get(t, c, testkit.HangCtx(t), "POST", "http://"+app.addr+"/", pr)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d", resp.StatusCode)
	}
	// The writer still waits on the body; closing it ends the writer
	// (CheckLeaks verifies).
}

// TestCancel: the request's context ending aborts a blocked read of the
// head, of the body, and a blocked write of the request body, with the
// context's error.
func TestCancel(t *testing.T) {
	testkit.CheckLeaks(t)
	release := make(chan struct{})
	defer close(release)
	got := make(chan struct{}, 4)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			w.WriteHeader(200)
			io.WriteString(w, "part")
			w.(http.Flusher).Flush()
		}
		got <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	c := newTestClient(t, Config{})

	t.Run("head", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testkit.HangCtx(t))
		go func() { <-got; cancel() }()
		_, _, err := get(t, c, ctx, "GET", "http://"+app.addr+"/head", nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
	})
	t.Run("body", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testkit.HangCtx(t))
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+app.addr+"/body", nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		<-got
		buf := make([]byte, 4)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := resp.Body.Read(buf); !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(testkit.HangCtx(t), 50*time.Millisecond)
		defer cancel()
		_, _, err := get(t, c, ctx, "GET", "http://"+app.addr+"/deadline", nil)
		<-got
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v, want context.DeadlineExceeded", err)
		}
	})
	t.Run("write", func(t *testing.T) {
		// A raw app that reads the head and nothing more: the body
		// fills the socket buffers and the write blocks.
		ln := testkit.Listen(t)
		ctx, cancel := context.WithCancel(testkit.HangCtx(t))
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			// A megabyte of the body, then no more reading: the writer
			// blocks once the socket buffers are full.
			io.CopyN(io.Discard, c, 1<<20)
			cancel()
			<-ctx.Done()
		}()
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ln.Addr().String()+"/", io.NopCloser(zeros{}))
		req.ContentLength = 1 << 40
		_, err := c.RoundTrip(req)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
	})
}

// zeros is an endless request body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestStaleConnectionRetried: an app that closes keep-alive connections
// right after answering (without Connection: close) loses no request:
// a replayable one is retried on a fresh connection, one that is not is
// given a fresh connection after the pooled one is found closed.
func TestStaleConnectionRetried(t *testing.T) {
	testkit.CheckLeaks(t)
	ln := testkit.Listen(t)
	closed := make(chan struct{}, 16)
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err == nil {
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	c := newTestClient(t, Config{})
	ctx := testkit.HangCtx(t)
	url := "http://" + ln.Addr().String() + "/"
	for i, tc := range []struct {
		method string
		body   io.Reader
	}{{"GET", nil}, {"GET", nil}, {"POST", strings.NewReader("data")}, {"DELETE", nil}, {"GET", nil}} {
		_, b, err := get(t, c, ctx, tc.method, url, tc.body)
		if err != nil || b != "ok" {
			t.Fatalf("request %d (%s): %q, %v", i, tc.method, b, err)
		}
		<-closed // the pooled connection is closed before the next request
	}
	if n := accepted.Load(); n != 5 {
		t.Errorf("%d connections, want 5 (one per request)", n)
	}
}

// TestPool: idle connections per host are bounded, responses with
// Connection: close are not reused, and idle connections expire.
func TestPool(t *testing.T) {
	testkit.CheckLeaks(t)
	hold := make(chan struct{})
	var arrived sync.WaitGroup
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hold":
			arrived.Done()
			<-hold
		case "/close":
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, "ok")
	})
	c := newTestClient(t, Config{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Hour})
	ctx := testkit.HangCtx(t)
	base := "http://" + app.addr
	arrived.Add(4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := get(t, c, ctx, "GET", base+"/hold", nil); err != nil {
				t.Error(err)
			}
		}()
	}
	arrived.Wait()
	close(hold)
	wg.Wait()
	if n := c.idleCount(); n != 2 {
		t.Errorf("%d idle connections, want 2 (MaxIdleConnsPerHost)", n)
	}
	before := app.conns.Load()
	get(t, c, ctx, "GET", base+"/close", nil)
	if n := c.idleCount(); n != 1 {
		t.Errorf("%d idle connections after a Connection: close response, want 1", n)
	}
	if app.conns.Load() != before {
		t.Errorf("a pooled connection was not used")
	}

	// Expiry: a client with a short idle timeout drops its connection.
	short := newTestClient(t, Config{IdleConnTimeout: 20 * time.Millisecond})
	if _, _, err := get(t, short, ctx, "GET", base+"/", nil); err != nil {
		t.Fatal(err)
	}
	for short.idleCount() != 0 {
		if time.Now().After(testkit.HangGuard(t)) {
			t.Fatal("idle connection never expired")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConcurrentLoad: many requests of every kind at once on few
// connections, under -race.
func TestConcurrentLoad(t *testing.T) {
	testkit.CheckLeaks(t)
	app := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/chunked" {
			w.Header().Set("Trailer", "X-N")
			w.Write(b)
			w.(http.Flusher).Flush()
			w.Header().Set("X-N", fmt.Sprint(len(b)))
			return
		}
		w.Write(b)
	})
	c := newTestClient(t, Config{MaxIdleConnsPerHost: 4})
	ctx := testkit.HangCtx(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				payload := strings.Repeat(fmt.Sprint(g), i*97%5000)
				path := "/"
				if i%3 == 0 {
					path = "/chunked"
				}
				resp, b, err := get(t, c, ctx, "POST", "http://"+app.addr+path, bytes.NewReader([]byte(payload)))
				if err != nil || b != payload {
					t.Errorf("request %d/%d: %d bytes, %v", g, i, len(b), err)
					return
				}
				if path == "/chunked" && resp.Trailer.Get("X-N") != fmt.Sprint(len(payload)) {
					t.Errorf("trailer %v", resp.Trailer)
				}
			}
		}()
	}
	wg.Wait()
}

// TestUnsolicitedBytesNotReused: bytes an app sends after a response (a
// body on a 204, say) make its connection unusable; the next request
// goes on a fresh one instead of reading them as its response.
func TestUnsolicitedBytesNotReused(t *testing.T) {
	testkit.CheckLeaks(t)
	sent := make(chan struct{}, 4)
	addr := cannedServer(t, false, func(string) string {
		defer func() { sent <- struct{}{} }()
		return "HTTP/1.1 204 No Content\r\n\r\nstray bytes"
	})
	c := newTestClient(t, Config{})
	for i := range 3 {
		resp, _, err := get(t, c, testkit.HangCtx(t), "GET", "http://"+addr+"/", nil)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("request %d: %v", i, err)
		}
		<-sent
	}
}
