package bench

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// scriptedServer answers every GET request head with resp; after each
// response it closes the connection if closeAfter. It returns the URL.
func scriptedServer(t *testing.T, resp string, closeAfter bool) string {
	t.Helper()
	return connServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			if _, err := io.WriteString(c, resp); err != nil || closeAfter {
				return
			}
		}
	})
}

// The closed loop gives the same results on the event loops as on the
// goroutine path, for the responses the loops handle themselves and for
// those they hand over (chunked, close-delimited, a head longer than the
// read buffer, a connection the server closes, errors).
func TestHTTP1LoopAndGoroutinePaths(t *testing.T) {
	base := testkit.TakeBaseline()
	t.Cleanup(func() { base.Check(t) })
	bigHead := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("f", 1000)+"\r\n", 20) + "Content-Length: 2\r\n\r\nok"
	cases := []struct {
		name, resp string
		closeAfter bool
		kind       string // every request fails with this kind; "" = none fails
	}{
		{name: "content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"},
		{name: "chunked", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
		{name: "interim then final", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"},
		{name: "204", resp: "HTTP/1.1 204 No Content\r\n\r\n"},
		{name: "connection close", resp: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", closeAfter: true},
		{name: "until close", resp: "HTTP/1.1 200 OK\r\n\r\nuntil the end", closeAfter: true},
		{name: "idle connection dropped", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", closeAfter: true},
		{name: "head longer than the buffer", resp: bigHead},
		{name: "503", resp: "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", kind: "http_5xx"},
		{name: "not HTTP", resp: "SSH-2.0-OpenSSH_9.2\r\n\r\n", kind: ErrBadResponse},
	}
	for _, tc := range cases {
		target := scriptedServer(t, tc.resp, tc.closeAfter)
		for _, loop := range []bool{true, false} {
			t.Run(tc.name+map[bool]string{true: "/loop", false: "/goroutines"}[loop], func(t *testing.T) {
				defer func(old bool) { h1EventLoops = old }(h1EventLoops)
				h1EventLoops = loop
				r := runMeasured(t, Config{Proto: ProtoHTTP1, Target: target, Concurrency: 2})
				if r.Requests == 0 {
					t.Fatal("no requests measured")
				}
				if tc.kind == "" && r.ErrorTotal != 0 {
					t.Errorf("%d requests, errors %v; want none", r.Requests, r.Errors)
				}
				if tc.kind != "" && (r.Errors[tc.kind] != r.Requests || r.ErrorTotal != r.Requests) {
					t.Errorf("%d requests, errors %v; want all %s", r.Requests, r.Errors, tc.kind)
				}
			})
		}
	}

	// A POST body larger than the socket buffers: the loop finishes
	// writing it when the socket drains.
	ln := testkit.Listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, loop := range []bool{true, false} {
		h1EventLoops = loop
		r := runMeasured(t, Config{Proto: ProtoHTTP1, Target: "http://" + ln.Addr().String() + "/", Concurrency: 2, Payload: 4 << 20})
		h1EventLoops = true
		if r.Requests == 0 || r.ErrorTotal != 0 {
			t.Errorf("POST 4 MiB, loop %v: %d requests, errors %v", loop, r.Requests, r.Errors)
		}
	}
}

// headEnd finds the end of a response head exactly where the line
// reader finds its empty line.
func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 25},
		{"HTTP/1.1 200 OK\n\nbody", 17},
		{"HTTP/1.1 200 OK\r\nA: b\r\n\r", -1},
		{"HTTP/1.1 200 OK\r\nA: b\r\n", -1},
		{"", -1},
		{"\r\n", -1}, // an empty status line is not a head's end; the parser rejects it
	} {
		if got := headEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("headEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func FuzzHeadEnd(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"))
	f.Add([]byte("HTTP/1.1 200 OK\n\n"))
	f.Add([]byte("a\n\r\r\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got := headEnd(data)
		// Reference: the first line (after the first) that is empty once
		// its LF and one CR before it are cut, as readLine does.
		want := -1
		off := 0
		for i := 0; ; i++ {
			j := bytes.IndexByte(data[off:], '\n')
			if j < 0 {
				break
			}
			line := data[off : off+j]
			if i > 0 && (len(line) == 0 || (len(line) == 1 && line[0] == '\r')) {
				want = off + j + 1
				break
			}
			off += j + 1
		}
		if got != want {
			t.Fatalf("headEnd(%q) = %d, want %d", data, got, want)
		}
	})
}

// BenchmarkHTTP1ClosedLoop is the whole closed loop of the generator
// against a canned-response server on loopback, on the event loops and on
// the goroutine path: one op is a 300 ms run of 8 workers. It reports the
// request rate, the generator's CPU per request and the heap allocations
// per request (the whole process, server included: compare the two).
func BenchmarkHTTP1ClosedLoop(b *testing.B) {
	target := cannedServer(b, benchResp)
	for _, loop := range []bool{true, false} {
		b.Run(map[bool]string{true: "loop", false: "goroutines"}[loop], func(b *testing.B) {
			defer func(old bool) { h1EventLoops = old }(h1EventLoops)
			h1EventLoops = loop
			var reqs int64
			var cpu, secs float64
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for b.Loop() {
				r, err := Run(context.Background(), Config{Proto: ProtoHTTP1, Target: target, Concurrency: 8, Duration: 300 * time.Millisecond})
				if err != nil {
					b.Fatal(err)
				}
				if r.ErrorTotal != 0 {
					b.Fatalf("errors %v", r.Errors)
				}
				reqs += r.Requests
				secs += r.DurationS
				if r.Generator != nil {
					cpu += r.Generator.CPUSeconds
				}
			}
			runtime.ReadMemStats(&after)
			if reqs == 0 {
				b.Fatal("no requests")
			}
			b.ReportMetric(float64(reqs)/secs, "req/s")
			b.ReportMetric(cpu*1e6/float64(reqs), "gen-µs/req")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(reqs), "allocs/req")
		})
	}
}

// h1SlotQueue keeps its workers in the order they were pushed across
// wrap-arounds and growth.
func TestH1SlotQueue(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  string // p: push the next worker, o: pop (checked in order)
	}{
		{"empty", ""},
		{"fill to the first size", "pppppppp" + "oooooooo"},
		{"grow", "ppppppppppppppppp" + "ooooooooooooooooo"},
		{"wrap then grow", "pppppooo" + "pppppppppppp" + "oooooooooooooo"},
		{"interleaved", "popopppooppopooo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q h1SlotQueue
			conns := make([]*h1LoopConn, len(tc.ops))
			for i := range conns {
				conns[i] = &h1LoopConn{idx: int32(i)}
			}
			pushed, popped := 0, 0
			for _, op := range tc.ops {
				if op == 'p' {
					q.push(conns[pushed])
					pushed++
					continue
				}
				if head := q.peek(); head != conns[popped] {
					t.Fatalf("peek: got %v, want worker %d", head, popped)
				}
				if got := q.pop(); got != conns[popped] {
					t.Fatalf("pop: got worker %d, want %d", got.idx, popped)
				}
				popped++
			}
			if q.size != pushed-popped {
				t.Errorf("size %d, want %d", q.size, pushed-popped)
			}
			if pushed == popped && q.peek() != nil {
				t.Error("peek of an empty queue is not nil")
			}
		})
	}
}
