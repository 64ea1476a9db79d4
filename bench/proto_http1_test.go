package bench

import (
	"bufio"
	"context"
	"errors"
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

// The lean HTTP/1.1 client's response parser, one response at a time.
func TestReadResponse(t *testing.T) {
	long := strings.Repeat("a", h1ReadBuffer+10)
	for _, tc := range []struct {
		name, resp string
		n          int64
		keep       bool
		status     int
		err        error  // errors.Is
		kind       string // classify, when err is nil but an error is expected
	}{
		{name: "content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", n: 3, keep: true, status: 200},
		{name: "no reason phrase", resp: "HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", n: 2, keep: true, status: 200},
		{name: "bare LF lines", resp: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", n: 2, keep: true, status: 200},
		{name: "chunked with extension and trailers",
			resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nEcho-Trailer: done\r\n\r\n",
			n:    15, keep: true, status: 200},
		{name: "interim 100 then 200", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", n: 1, keep: true, status: 200},
		{name: "connection close", resp: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", n: 2, keep: false, status: 200},
		{name: "connection tokens", resp: "HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n", keep: false, status: 200},
		{name: "HTTP/1.0 default close", resp: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", n: 2, keep: false, status: 200},
		{name: "HTTP/1.0 keep-alive", resp: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", n: 2, keep: true, status: 200},
		{name: "body until close", resp: "HTTP/1.1 200 OK\r\n\r\nuntil the end", n: 13, keep: false, status: 200},
		{name: "204 has no body", resp: "HTTP/1.1 204 No Content\r\n\r\n", keep: true, status: 204},
		{name: "status 503", resp: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", n: 4, keep: true, status: 503},
		{name: "nothing: connection lost", resp: "", err: errConnLost},
		{name: "truncated head", resp: "HTTP/1.1 200 OK\r\nContent-Len", err: io.ErrUnexpectedEOF},
		{name: "truncated body", resp: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", err: io.ErrUnexpectedEOF},
		{name: "truncated chunk", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", err: io.ErrUnexpectedEOF},
		{name: "not HTTP", resp: "SSH-2.0-OpenSSH_9.2\r\n\r\n", kind: ErrBadResponse},
		{name: "bad status", resp: "HTTP/1.1 2x0 OK\r\n\r\n", kind: ErrBadResponse},
		{name: "bad content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", kind: ErrBadResponse},
		{name: "conflicting content-lengths", resp: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", kind: ErrBadResponse},
		{name: "bad chunk size", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", kind: ErrBadResponse},
		{name: "header line too long", resp: "HTTP/1.1 200 OK\r\nX: " + long + "\r\n\r\n", kind: ErrBadResponse},
		{name: "header without colon", resp: "HTTP/1.1 200 OK\r\nnonsense\r\n\r\n", kind: ErrBadResponse},
		{name: "101 not asked for", resp: "HTTP/1.1 101 Switching Protocols\r\n\r\n", kind: ErrBadResponse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.resp), h1ReadBuffer)
			n, keep, status, err := readResponse(br)
			switch {
			case tc.err != nil:
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			case tc.kind != "":
				if err == nil || classify(nil, err) != tc.kind {
					t.Fatalf("err = %v (kind %s), want kind %s", err, classify(nil, err), tc.kind)
				}
				return
			case err != nil:
				t.Fatalf("err = %v", err)
			}
			if n != tc.n || keep != tc.keep || status != tc.status {
				t.Errorf("got n=%d keep=%v status=%d, want n=%d keep=%v status=%d", n, keep, status, tc.n, tc.keep, tc.status)
			}
			if br.Buffered() != 0 {
				t.Errorf("%d bytes left unread", br.Buffered())
			}
		})
	}
}

// Two responses back to back on one connection are framed apart.
func TestReadResponsePipelined(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"))
	for i, want := range []int64{2, 3} {
		n, keep, _, err := readResponse(br)
		if err != nil || n != want || !keep {
			t.Fatalf("response %d: n=%d keep=%v err=%v, want n=%d", i, n, keep, err, want)
		}
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// The number of connections is exactly Config.Connections, whether every
// worker owns one or they share a pool, and keep-alive holds: no redials.
func TestHTTP1Connections(t *testing.T) {
	base := testkit.TakeBaseline()
	for _, tc := range []struct{ concurrency, connections int }{{4, 0}, {4, 4}, {6, 2}, {3, 1}} {
		ln := &countingListener{Listener: testkit.Listen(t)}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(w, r.Body)
		})}
		go srv.Serve(ln)
		r := runMeasured(t, Config{Proto: ProtoHTTP1, Target: "http://" + ln.Addr().String() + "/", Payload: 100,
			Concurrency: tc.concurrency, Connections: tc.connections})
		srv.Close()
		want := int64(tc.connections)
		if want == 0 {
			want = int64(tc.concurrency)
		}
		if r.Requests == 0 || r.ErrorTotal != 0 {
			t.Errorf("concurrency %d connections %d: %d requests, errors %v", tc.concurrency, tc.connections, r.Requests, r.Errors)
		}
		if got := ln.accepted.Load(); got != want {
			t.Errorf("concurrency %d connections %d: %d connections accepted, want %d", tc.concurrency, tc.connections, got, want)
		}
	}
	base.Check(t)
}

// stallingServer accepts connections, reads requests and never answers.
// It returns the target URL.
func stallingServer(t *testing.T) string {
	t.Helper()
	return connServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// connServer runs handle on every accepted connection, closes them all at
// the end of the test and waits for its goroutines. It returns the URL.
func connServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln := testkit.Listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			})
		}
	})
	return "http://" + ln.Addr().String() + "/"
}

// A target that never answers: every request times out after
// Config.Timeout and is counted as a timeout, in either load model and
// whether workers own or share connections.
func TestHTTP1Timeout(t *testing.T) {
	base := testkit.TakeBaseline()
	// Checked after the server's cleanup (cleanups run last first).
	t.Cleanup(func() { base.Check(t) })
	target := stallingServer(t)
	const timeout = 100 * time.Millisecond
	for _, tc := range []struct {
		rate        float64
		connections int
	}{{0, 0}, {0, 1}, {50, 0}, {50, 1}} {
		r, err := Run(context.Background(), Config{Proto: ProtoHTTP1, Target: target, Rate: tc.rate,
			Concurrency: 2, Connections: tc.connections, Duration: 1500 * time.Millisecond, Timeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests == 0 || r.Errors[ErrTimeout] != r.Requests || r.ErrorTotal != r.Requests {
			t.Errorf("rate %v connections %d: %d requests, errors %v; want all timeouts", tc.rate, tc.connections, r.Requests, r.Errors)
		}
	}
}

// The end of a closed-loop run cuts off the requests in flight at once
// (they are not failures), rather than after their timeout; so does the
// caller's context.
func TestHTTP1RunEndCutsInFlight(t *testing.T) {
	base := testkit.TakeBaseline()
	// Checked after the server's cleanup (cleanups run last first).
	t.Cleanup(func() { base.Check(t) })
	target := stallingServer(t)
	const timeout = time.Hour // only the end of the run can end a request
	start := time.Now()
	r, err := Run(context.Background(), Config{Proto: ProtoHTTP1, Target: target, Concurrency: 2,
		Duration: 200 * time.Millisecond, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 0 || r.ErrorTotal != 0 {
		t.Errorf("%d requests, errors %v; want none counted", r.Requests, r.Errors)
	}
	// The hang guard of the test binary bounds this; a minute only rules
	// out waiting for the hour-long timeout.
	if el := time.Since(start); el > time.Minute {
		t.Errorf("run took %v", el)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Config{Proto: ProtoHTTP1, Target: target, Rate: 100, Concurrency: 2, Connections: 1,
			Duration: time.Hour, Timeout: timeout})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("an interrupted open-loop run did not end")
	}
}

// cannedServer answers every request on a connection with resp, as fast as
// it can parse request heads (GET only), for the micro-benchmarks.
func cannedServer(b *testing.B, resp string) string {
	b.Helper()
	ln := testkit.Listen(b)
	out := []byte(resp) // no allocation per response: allocs/op are the client's
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					// A GET head ends with an empty line.
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := c.Write(out); err != nil {
						return
					}
				}
			})
		}
	})
	return "http://" + ln.Addr().String() + "/"
}

const benchResp = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Echo-Host: 127.0.0.1:8080\r\nEcho-Method: GET\r\nEcho-Proto: HTTP/1.1\r\nDate: Wed, 02 Dec 2026 13:28:11 GMT\r\n\r\nok\n"

// BenchmarkHTTP1ReadResponse is the parser alone: one echo-app response.
func BenchmarkHTTP1ReadResponse(b *testing.B) {
	r := strings.NewReader(benchResp)
	br := bufio.NewReaderSize(r, h1ReadBuffer)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(benchResp)
		br.Reset(r)
		if _, _, _, err := readResponse(br); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTP1RoundTrip is one request of a worker on its own keep-alive
// loopback connection to a canned-response server: the generator's client
// (lean) against net/http's (what it used before) on the same server.
// Most of the time is the two processes' system calls; compare allocs/op
// and ns/op between the two.
func BenchmarkHTTP1RoundTrip(b *testing.B) {
	target := cannedServer(b, benchResp)
	b.Run("lean", func(b *testing.B) {
		t, err := newHTTP1Target(Config{Proto: ProtoHTTP1, Target: target, Concurrency: 1, Connections: 1, Timeout: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		defer t.close()
		rq := t.requester(0)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rq.do(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("net-http", func(b *testing.B) {
		tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr}
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			cancel()
		}
	})
}

// nopRequester answers at once: BenchmarkEngineOne measures the engine's
// own cost per request (clock reads, histogram, counters).
type nopRequester struct{}

func (nopRequester) do(context.Context) (int64, error) { return 3, nil }
func (nopRequester) close()                            {}
func (nopRequester) selfTimed()                        {}

func BenchmarkEngineOne(b *testing.B) {
	cfg := Config{Proto: ProtoHTTP1, Target: "http://127.0.0.1:1/", Duration: time.Hour}
	if err := cfg.normalize(); err != nil {
		b.Fatal(err)
	}
	e := &engine{cfg: cfg, clock: cfg.Clock, ctx: context.Background(), reqCtx: context.Background()}
	e.start = e.clock.Now()
	e.warmEnd, e.end = e.start, e.start.Add(time.Hour)
	w := worker{rq: nopRequester{}, st: &workerStats{}, selfTimed: true}
	b.ReportAllocs()
	for b.Loop() {
		e.one(w, e.clock.Now(), true)
	}
	if w.st.reqs != int64(b.N) {
		b.Fatalf("%d requests recorded, want %d", w.st.reqs, b.N)
	}
}
