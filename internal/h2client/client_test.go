package h2client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// startH2C serves h on an h2c-only net/http server with x/net's HTTP/2
// server inside (http2.ConfigureServer: the tests pass built as the
// sidecar is, without net/http's bundled HTTP/2) on loopback.
func startH2C(t *testing.T, h http.Handler, maxStreams uint32) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: int(maxStreams)}}
	if err := http2.ConfigureServer(srv, nil); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type failRT struct{ t *testing.T }

func (f failRT) RoundTrip(r *http.Request) (*http.Response, error) {
	f.t.Errorf("request %s %s went to the fallback", r.Method, r.URL)
	return nil, errors.New("fallback")
}

// newClient returns a client whose connections are all checked to have
// ended (read loop gone) when the test ends.
func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Fallback == nil {
		cfg.Fallback = failRT{t}
	}
	c := New(cfg)
	var mu sync.Mutex
	var conns []net.Conn
	dial := c.cfg.Dial
	c.cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
		return nc, err
	}
	t.Cleanup(func() {
		all := c.pool.all()
		c.Close()
		for _, cc := range all {
			select {
			case <-cc.done:
			case <-time.After(10 * time.Second):
				t.Errorf("read loop of a connection to %s did not end", cc.addr)
			}
		}
	})
	return c
}

func request(t *testing.T, ctx context.Context, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestExchange(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Method", r.Method)
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(big) })
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Declared")
		io.WriteString(w, "body")
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
	})
	mux.HandleFunc("/reqtrailer", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, r.Trailer.Get("X-Req"))
	})
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "after hints")
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/length", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "abc")
	})
	mux.HandleFunc("/hugeheader", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Huge", strings.Repeat("h", 100<<10))
	})
	addr := startH2C(t, mux, 0)
	c := newClient(t, Config{StreamWindow: 64 << 10, MaxStreams: 2, MaxResponseHeaderBytes: 64 << 10})

	tests := []struct {
		name       string
		method     string
		path       string
		body       []byte
		reqTrailer http.Header
		status     int
		want       []byte
		length     int64
		trailer    http.Header
		header     http.Header
		infos      []int
		wantErr    string
	}{
		{name: "GET", method: "GET", path: "/hello", status: 200, want: []byte("hello"), length: 5},
		{name: "POST echo", method: "POST", path: "/echo", body: []byte("ping"), status: 200, want: []byte("ping"), length: 4, header: http.Header{"X-Method": {"POST"}}},
		{name: "response over the windows", method: "GET", path: "/big", status: 200, want: big, length: -1},
		{name: "request and response over the windows", method: "PUT", path: "/echo", body: big, status: 200, want: big, length: -1},
		{name: "trailers", method: "GET", path: "/trailers", status: 200, want: []byte("body"), length: 4, trailer: http.Header{"X-Declared": {"d"}, "X-Undeclared": {"u"}}},
		{name: "request trailers", method: "POST", path: "/reqtrailer", body: []byte("x"), reqTrailer: http.Header{"X-Req": {"sent"}}, status: 200, want: []byte("sent"), length: 4},
		{name: "103 then 200", method: "GET", path: "/early", status: 200, want: []byte("after hints"), length: 11, infos: []int{103}},
		{name: "204", method: "GET", path: "/nocontent", status: 204, want: nil, length: 0},
		{name: "Content-Length", method: "GET", path: "/length", status: 200, want: []byte("abc"), length: 3},
		{name: "header over the limit", method: "GET", path: "/hugeheader", wantErr: "response header section over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != nil {
				body = bytes.NewReader(tt.body)
			}
			var infos []int
			ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
				Got1xxResponse: func(code int, _ textproto.MIMEHeader) error { infos = append(infos, code); return nil },
			})
			req := request(t, ctx, tt.method, "http://"+addr+tt.path, body)
			if tt.reqTrailer != nil {
				req.Trailer = http.Header{"X-Req": nil}
				req.Body = &trailerBody{r: bytes.NewReader(tt.body), req: req, t: tt.reqTrailer}
				req.ContentLength = -1
			}
			resp, err := c.RoundTrip(req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || !bytes.Equal(got, tt.want) || resp.ContentLength != tt.length {
				t.Errorf("status %d, %d bytes, length %d; want %d, %d bytes, %d", resp.StatusCode, len(got), resp.ContentLength, tt.status, len(tt.want), tt.length)
			}
			for k, vv := range tt.trailer {
				if g := resp.Trailer[k]; len(g) != 1 || g[0] != vv[0] {
					t.Errorf("trailer %s = %q, want %q (all: %v)", k, g, vv, resp.Trailer)
				}
			}
			for k, vv := range tt.header {
				if g := resp.Header.Get(k); g != vv[0] {
					t.Errorf("header %s = %q, want %q", k, g, vv[0])
				}
			}
			if fmt.Sprint(infos) != fmt.Sprint(tt.infos) && !(len(infos) == 0 && len(tt.infos) == 0) {
				t.Errorf("1xx %v, want %v", infos, tt.infos)
			}
		})
	}
}

// trailerBody sets its request's trailers at EOF, as bridge's
// trailerCopier does.
type trailerBody struct {
	r   *bytes.Reader
	req *http.Request
	t   http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		for k, v := range b.t {
			b.req.Trailer[k] = v
		}
	}
	return n, err
}
func (b *trailerBody) Close() error { return nil }

func TestFallback(t *testing.T) {
	var got []string
	c := New(Config{Fallback: rtFunc(func(r *http.Request) (*http.Response, error) {
		got = append(got, r.Method+" "+r.URL.String())
		return nil, errors.New("fallback")
	})})
	defer c.Close()
	for _, tt := range []struct{ method, url, hdr string }{
		{"CONNECT", "http://a:1/", ""},
		{"GET", "https://a:1/", ""},
		{"GET", "http://a/", ""},
		{"GET", "http://u:p@a:1/", ""},
		{"GET", "http://a:1/", "Upgrade"},
		{"GET", "http://a:1/", "Expect"},
	} {
		req := request(t, t.Context(), tt.method, tt.url, nil)
		if tt.hdr != "" {
			req.Header.Set(tt.hdr, "x")
		}
		c.RoundTrip(req)
	}
	if len(got) != 6 {
		t.Errorf("fallback got %d requests: %v", len(got), got)
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestCancel: a request whose context ends mid-response is reset; its
// body read fails and the app sees its request end.
func TestCancel(t *testing.T) {
	appDone := make(chan struct{})
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(appDone)
	}), 0)
	c := newClient(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	resp, err := c.RoundTrip(request(t, ctx, "POST", "http://"+addr+"/", pr))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("read %q, %v", buf, err)
	}
	cancel()
	if _, err := resp.Body.Read(buf); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v, want context.Canceled", err)
	}
	<-appDone
	// The request body's reader was closed: a write fails.
	if _, err := pw.Write([]byte("x")); err == nil {
		t.Error("request body still read after cancel")
	}
	resp.Body.Close()
}

// TestMaxConcurrentStreamsOne: an app that takes one stream at a time
// gets a connection per request.
func TestMaxConcurrentStreamsOne(t *testing.T) {
	release := make(chan struct{})
	in := make(chan string, 2)
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in <- r.RemoteAddr
		<-release
		io.WriteString(w, "ok")
	}), 1)
	c := newClient(t, Config{})
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			resp, err := c.RoundTrip(request(t, t.Context(), "GET", "http://"+addr+"/", nil))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			errc <- err
		}()
	}
	a, b := <-in, <-in
	if a == b {
		t.Errorf("both requests on %s", a)
	}
	close(release)
	for range 2 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// TestStalledReaderIsolation: a response nobody reads holds its stream's
// window only; another request on the same connection goes through.
func TestStalledReaderIsolation(t *testing.T) {
	big := bytes.Repeat([]byte("z"), 4<<20)
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Remote", r.RemoteAddr)
		w.Write(big)
	}), 0)
	c := newClient(t, Config{StreamWindow: 64 << 10, MaxStreams: 4})
	stalled, err := c.RoundTrip(request(t, t.Context(), "GET", "http://"+addr+"/", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close()
	for i := range 3 {
		resp, err := c.RoundTrip(request(t, t.Context(), "GET", "http://"+addr+"/", nil))
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(big)) {
			t.Fatalf("request %d: %d bytes, %v", i, n, err)
		}
		if resp.Header.Get("X-Remote") != stalled.Header.Get("X-Remote") {
			t.Fatalf("request %d on another connection", i)
		}
	}
}

// rawApp serves one scripted HTTP/2 app per accepted connection: serve
// gets the connection's index, its framer (SETTINGS already exchanged)
// and the frames read.
func rawApp(t *testing.T, serve func(i int, fr *http2.Framer, enc func(...string) []byte)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				br := bufio.NewReader(nc)
				if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
					return
				}
				fr := http2.NewFramer(nc, br)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				var hbuf bytes.Buffer
				henc := hpack.NewEncoder(&hbuf)
				enc := func(kv ...string) []byte {
					hbuf.Reset()
					for j := 0; j < len(kv); j += 2 {
						henc.WriteField(hpack.HeaderField{Name: kv[j], Value: kv[j+1]})
					}
					return bytes.Clone(hbuf.Bytes())
				}
				fr.WriteSettings()
				serve(i, fr, enc)
			}()
		}
	}()
	return ln.Addr().String()
}

// readHeaders reads frames until a request's HEADERS, acking SETTINGS.
func readHeaders(fr *http2.Framer) (*http2.MetaHeadersFrame, error) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			return f, nil
		}
	}
}

func TestAppMisbehaves(t *testing.T) {
	windowReady := make(chan struct{})
	tests := []struct {
		name    string
		body    bool
		serve   func(i int, fr *http2.Framer, enc func(...string) []byte)
		wantErr string // "" for success
	}{
		{"closes the connection", false, func(i int, fr *http2.Framer, _ func(...string) []byte) {
			readHeaders(fr)
		}, "closed by the app"},
		{"GOAWAY, no body: retried", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			h, err := readHeaders(fr)
			if err != nil {
				return
			}
			if i == 0 {
				fr.WriteGoAway(0, http2.ErrCodeNo, nil)
				readHeaders(fr)
				return
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true, BlockFragment: enc(":status", "200")})
			readHeaders(fr)
		}, ""},
		{"GOAWAY, with body: not retried", true, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			if _, err := readHeaders(fr); err != nil {
				return
			}
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			readHeaders(fr)
		}, "did not process the request"},
		{"REFUSED_STREAM, no body: retried", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			for n := 0; ; n++ {
				h, err := readHeaders(fr)
				if err != nil {
					return
				}
				if n == 0 {
					fr.WriteRSTStream(h.StreamID, http2.ErrCodeRefusedStream)
					continue
				}
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true, BlockFragment: enc(":status", "200")})
			}
		}, ""},
		{"DATA before HEADERS", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			h, err := readHeaders(fr)
			if err != nil {
				return
			}
			fr.WriteData(h.StreamID, true, []byte("x"))
			readHeaders(fr)
		}, "DATA before the response headers"},
		{"response over the stream window", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			h, err := readHeaders(fr)
			if err != nil {
				return
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: enc(":status", "200")})
			chunk := make([]byte, 16384)
			for range 5 { // 80 KiB > 64 KiB, with the test not reading
				fr.WriteData(h.StreamID, false, chunk)
			}
			// The client's read loop takes frames in order: once it has
			// acked this PING, it has seen every DATA frame.
			fr.WritePing(false, [8]byte{})
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
					close(windowReady)
					break
				}
			}
			readHeaders(fr)
		}, "FLOW_CONTROL_ERROR"},
		{"trailers without END_STREAM", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			h, err := readHeaders(fr)
			if err != nil {
				return
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: enc(":status", "200")})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: enc("grpc-status", "0")})
			readHeaders(fr)
		}, "trailers without END_STREAM"},
		{"Content-Length mismatch", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			h, err := readHeaders(fr)
			if err != nil {
				return
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: enc(":status", "200", "content-length", "5")})
			fr.WriteData(h.StreamID, true, []byte("abc"))
			readHeaders(fr)
		}, "Content-Length"},
		{"PING unanswered", false, func(i int, fr *http2.Framer, enc func(...string) []byte) {
			for {
				if _, err := fr.ReadFrame(); err != nil {
					return
				}
			}
		}, "PING not acknowledged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawApp(t, tt.serve)
			cfg := Config{}
			if strings.HasPrefix(tt.name, "PING") {
				cfg.PingAfter, cfg.PingTimeout = 50*time.Millisecond, 50*time.Millisecond
			}
			c := newClient(t, cfg)
			var body io.Reader
			if tt.body {
				body = strings.NewReader("body")
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			resp, err := c.RoundTrip(request(t, ctx, "POST", "http://"+addr+"/", body))
			if err == nil {
				if strings.HasPrefix(tt.name, "response over") {
					<-windowReady
				}
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if ctx.Err() != nil {
				t.Fatal("ended by the test's deadline")
			}
		})
	}
}
