package h1server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// serveCfg serves one connection with cfg and returns the client side
// and a channel closed when ServeConn has returned.
func serveCfg(t *testing.T, cfg Config) (net.Conn, *bufio.Reader, <-chan struct{}) {
	t.Helper()
	ln := testkit.Listen(t)
	if cfg.Fallback == nil {
		cfg.Fallback = func(c net.Conn) { c.Close() }
	}
	s := New(cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.ServeConn(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); ln.Close(); <-done })
	c.SetDeadline(testkit.HangGuard(t))
	return c, bufio.NewReader(c), done
}

func readOK(t *testing.T, br *bufio.Reader, want string) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != want {
		t.Fatalf("body %q (%v), want %q", got, err, want)
	}
	return resp
}

func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-testkit.HangCtx(t).Done():
		t.Fatal(what)
	}
}

// The app's disconnect cancels the request in flight, whichever request
// of the connection it is and however its body was read, and the
// connection's goroutines (ServeConn's and the watch's) end with it.
func TestDisconnectCancelsInFlight(t *testing.T) {
	for _, tt := range []struct {
		name   string
		before int // requests answered on the connection first
		raw    string
		read   func(r *http.Request) // reads the body before the handler waits
	}{
		{"GET, first request", 0, "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n", nil},
		{"GET, after keep-alive requests", 3, "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n", nil},
		{"Content-Length body read by the handler", 1,
			"POST /wait HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", func(r *http.Request) { io.ReadAll(r.Body) }},
		{"chunked body read by another goroutine", 1,
			"POST /wait HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", func(r *http.Request) {
				read := make(chan struct{})
				go func() { defer close(read); io.ReadAll(r.Body) }()
				<-read
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testkit.CheckLeaks(t)
			started, cancelled := make(chan struct{}), make(chan struct{})
			c, br, done := serveCfg(t, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/wait" {
					io.WriteString(w, r.URL.Path)
					return
				}
				if tt.read != nil {
					tt.read(r)
				}
				close(started)
				<-r.Context().Done()
				close(cancelled)
			})})
			for i := range tt.before {
				p := "/r" + strconv.Itoa(i)
				io.WriteString(c, "GET "+p+" HTTP/1.1\r\nHost: a\r\n\r\n")
				readOK(t, br, p)
			}
			io.WriteString(c, tt.raw)
			<-started
			c.Close()
			waitDone(t, cancelled, "the request was not cancelled when the app closed its connection")
			waitDone(t, done, "ServeConn did not return after the app closed its connection")
		})
	}
}

// A pipelined request that arrives while the handler runs ends the
// watch without cancelling anything; both are answered in order, and a
// later disconnect still cancels the second.
func TestPipelinedWhileHandlerRuns(t *testing.T) {
	testkit.CheckLeaks(t)
	arrived := make(chan struct{})
	cancelled := make(chan struct{})
	c, br, done := serveCfg(t, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/first":
			<-arrived
			if err := r.Context().Err(); err != nil {
				t.Errorf("first request cancelled by a pipelined one: %v", err)
			}
			io.WriteString(w, "first")
		case "/second":
			io.WriteString(w, "second")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			close(cancelled)
		}
	})})
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
	// The second head is written while the first handler waits; the
	// watch sees its bytes (there is no event for "the watch has read
	// them", so the handler waits for the write, which may complete
	// before or after the watch's read: both orders are served).
	io.WriteString(c, "GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
	close(arrived)
	readOK(t, br, "first")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := make([]byte, 6); func() bool { _, err := io.ReadFull(resp.Body, b); return err != nil || string(b) != "second" }() {
		t.Fatal("second response not received")
	}
	c.Close()
	waitDone(t, cancelled, "the second request was not cancelled when the app closed its connection")
	waitDone(t, done, "ServeConn did not return")
}

// The response header map is reused across the requests of a
// connection: no field of one response leaks into the next, also after
// a response with more fields than a reused map keeps.
func TestResponseHeaderNotCarriedOver(t *testing.T) {
	testkit.CheckLeaks(t)
	c, br, _ := serveCfg(t, Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("fields"))
		for i := range n {
			w.Header().Set(fmt.Sprintf("X-F%d", i), r.URL.Path)
		}
		w.Header().Set("X-Path", r.URL.Path)
		io.WriteString(w, r.URL.Path)
	})})
	for _, tt := range []struct {
		path   string
		fields int
	}{{"/a", 3}, {"/b", 0}, {"/c", 2 * maxReusedFields}, {"/d", 1}, {"/e", 0}} {
		io.WriteString(c, "GET "+tt.path+"?fields="+strconv.Itoa(tt.fields)+" HTTP/1.1\r\nHost: a\r\n\r\n")
		resp := readOK(t, br, tt.path)
		for k, vv := range resp.Header {
			if !strings.HasPrefix(k, "X-") {
				continue
			}
			if len(vv) != 1 || vv[0] != tt.path {
				t.Fatalf("%s: field %s: %q", tt.path, k, vv)
			}
		}
		if got := len(resp.Header) - 4; got != tt.fields { // X-Path, Date, Content-Length, Content-Type
			t.Fatalf("%s: %d X- fields besides X-Path, want %d: %v", tt.path, got, tt.fields, resp.Header)
		}
	}
}

// The watch goroutine ends with the connection however it ends: the
// handler panicking while the watch is armed, an idle timeout, a
// response with Connection: close, a hand-off to the fallback.
func TestWatchEndsWithConnection(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		raw  string
	}{
		{"panic", Config{}, "GET /panic HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"idle timeout", Config{IdleTimeout: 50 * time.Millisecond}, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"close", Config{}, "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
		{"fallback", Config{}, "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testkit.CheckLeaks(t)
			handedOff := make(chan struct{})
			tt.cfg.Fallback = func(c net.Conn) { close(handedOff); c.Close() }
			tt.cfg.Log = testkit.DebugLogger()
			tt.cfg.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/panic" {
					panic("test panic")
				}
				io.WriteString(w, r.URL.Path)
			})
			c, br, done := serveCfg(t, tt.cfg)
			io.WriteString(c, tt.raw)
			// The server ends the connection by itself in every case.
			io.Copy(io.Discard, br)
			waitDone(t, done, "ServeConn did not return")
			if tt.name == "fallback" {
				waitDone(t, handedOff, "not handed to the fallback")
			}
		})
	}
}
