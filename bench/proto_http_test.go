package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// closingServer answers every HTTP request on a connection with resp and
// then closes the connection, the way python3 -m http.server (HTTP/1.0)
// does. Request bodies are read and dropped.
func closingServer(t *testing.T, resp string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, resp)
			})
		}
	})
	return "http://" + ln.Addr().String() + "/"
}

// A server that closes its connection after each response is not failing
// the requests: the generator redials and counts no error.
func TestHTTP1ServerClosingEachConnection(t *testing.T) {
	announced := closingServer(t, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
	untilClose := closingServer(t, "HTTP/1.0 200 OK\r\n\r\nok")
	// Says nothing about closing: the close is only seen when the next
	// request on the connection fails.
	unannounced := closingServer(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	connectionClose := httpServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.Copy(w, r.Body) // the generator checks POST echoes
		if r.Method == http.MethodGet {
			io.WriteString(w, "ok")
		}
	}))
	// Back-to-back requests (closed loop, one worker per connection)
	// leave the least time between a response and the next request: the
	// window in which net/http has not yet noticed the close.
	for _, tc := range []struct {
		name, target string
		payload      int
	}{
		{"HTTP/1.0 with Content-Length", announced, 0},
		{"HTTP/1.0 body until close", untilClose, 0},
		{"HTTP/1.1 closed without notice", unannounced, 0},
		{"Connection: close", connectionClose, 0},
		{"Connection: close, POST", connectionClose, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runMeasured(t, Config{Proto: ProtoHTTP1, Target: tc.target, Concurrency: 4, Payload: tc.payload, Timeout: 10 * time.Second})
			if r.ErrorTotal != 0 || r.Requests == 0 {
				t.Fatalf("%d requests, errors %v; want no errors", r.Requests, r.Errors)
			}
		})
	}
}

func httpServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

// A request that fails on a connection that just carried one without
// incident is sent once more on a new connection; a failure on a new
// connection is the request's and is counted.
func TestHTTP1FailureOnNewConnectionCounts(t *testing.T) {
	// Accepts and closes at once: every request fails on a new connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	r, err := Run(context.Background(), Config{Proto: ProtoHTTP1, Target: "http://" + ln.Addr().String() + "/",
		Rate: 200, Duration: 300 * time.Millisecond, Concurrency: 2, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.Errors[ErrReset] != r.Requests {
		t.Fatalf("%d requests, errors %v; want every request counted as %s", r.Requests, r.Errors, ErrReset)
	}
	if strings.Contains(strings.Join(keys(r.Errors), ","), ErrOther) {
		t.Errorf("unclassified errors: %v", r.Errors)
	}
}

func keys(m map[string]int64) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestClassifyConnectionLoss(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want string
	}{
		{nil, errors.New("http: persistConn.readLoop exiting"), ErrReset},
		{nil, errors.New("http: server closed idle connection"), ErrReset},
		{nil, fmt.Errorf("%w: %w", errConnLost, io.EOF), ErrReset},
		{nil, fmt.Errorf("%w: %w", errConnLost, syscall.ECONNRESET), ErrReset},
		{expired, fmt.Errorf("%w: %w", errConnLost, io.EOF), ErrTimeout},
		{nil, httpStatusError{503}, "http_5xx"},
		{nil, errors.New("something new"), ErrOther},
	} {
		if got := classify(tc.ctx, tc.err); got != tc.want {
			t.Errorf("classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}
