package httpx

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// statusBodyErr is what the test handler answers when reading the request
// body fails, i.e. when net/http only noticed a problem after calling it.
const statusBodyErr = http.StatusInternalServerError

// recordingHandler counts calls and echoes the request it received.
type recordingHandler struct{ calls atomic.Int32 }

func (h *recordingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.calls.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), statusBodyErr)
		return
	}
	fmt.Fprintf(w, "%s %s te=%q body=%q trailer=%q", r.Method, r.RequestURI, r.Header.Get("Te"), body, r.Trailer)
}

type stack int

const (
	plainServer    stack = iota // net/http alone
	guardOnly                   // Guard, no InspectConn
	guardInspected              // Guard + InspectListener + ConnContext
)

// startServer runs http.Server{Handler: ..., MaxHeaderBytes: 64 KiB} on a
// loopback listener and returns its address.
func startServer(t *testing.T, next http.Handler, s stack) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: next, MaxHeaderBytes: 64 << 10}
	switch s {
	case guardOnly:
		srv.Handler = Guard(next)
	case guardInspected:
		srv.Handler = Guard(next)
		srv.ConnContext = ConnContext
		ln = InspectListener(ln)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type rawResult struct {
	statuses   []int
	proxyErrs  []string
	bodies     []string
	closed     bool // the server closed the connection after the last response
	readErrors error
}

// exchange writes raw in a single write and reads n responses.
func exchange(t *testing.T, addr, raw string, n int) rawResult {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	var res rawResult
	br := bufio.NewReader(conn)
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			res.readErrors = err
			return res
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res.statuses = append(res.statuses, resp.StatusCode)
		res.proxyErrs = append(res.proxyErrs, resp.Header.Get(HeaderProxyError))
		res.bodies = append(res.bodies, string(body))
	}
	// Only meaningful after a refusal: a kept-alive connection would just
	// time out here.
	if len(res.statuses) > 0 && res.statuses[len(res.statuses)-1] != http.StatusOK {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := br.ReadByte()
		res.closed = errors.Is(err, io.EOF) || isConnReset(err)
	}
	return res
}

func isConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

const host = "Host: app.local\r\n"

// rawCase is one raw request (or pipeline of requests) and what each server
// stack must answer.
type rawCase struct {
	name string
	raw  string
	// net/http alone: the statuses of the responses and how many requests
	// reach the handler. A request that reaches the handler answers 200,
	// or statusBodyErr if its body cannot be read.
	std      []int
	stdCalls int
	// Guard with InspectConn: statuses and calls of next.
	guard      []int
	guardCalls int
}

// chunk encodes data as one chunk.
func chunk(data string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(data), data) }

var bigHeader = "X-Big: " + strings.Repeat("a", 80<<10) + "\r\n"

var rawCases = []rawCase{
	// Content-Length + Transfer-Encoding: net/http honours TE and drops CL.
	{
		name: "CL then TE",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "TE then CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "TE CHUNKED (case) with CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "CL.0 smuggling a second request in a chunked body",
		raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n" +
			chunk("GET /smuggled HTTP/1.1\r\nHost: app.local\r\n\r\n") + "0\r\n\r\n",
		std: []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "TE.CL: TE-reading front end would see a second request",
		raw: "POST / HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
			chunk("GPOST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 15\r\n\r\nx=1") + "0\r\n\r\n",
		std: []int{200}, stdCalls: 1, guard: []int{400},
	},
	// HTTP/1.0 + Transfer-Encoding: net/http ignores TE and frames by CL.
	{
		name: "HTTP/1.0 TE and CL",
		raw:  "POST / HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "HTTP/1.0 TE only",
		raw:  "POST / HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	// Content-Length variations.
	{
		name: "duplicate differing CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "CL list",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 6\r\n\r\nhello!",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "negative CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "CL with plus sign",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\nhello",
		std:  []int{400}, guard: []int{400},
	},
	// Transfer-Encoding variations: net/http answers 501 itself.
	{
		name: "TE xchunked",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		std:  []int{501}, guard: []int{501},
	},
	{
		name: "TE chunked, identity",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
		std:  []int{501}, guard: []int{501},
	},
	{
		name: "TE identity, chunked with CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		std:  []int{501}, guard: []int{501},
	},
	{
		name: "two TE fields",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		std:  []int{501}, guard: []int{501},
	},
	{
		name: "TE with vertical tab",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "space before colon in TE",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
		std:  []int{400}, guard: []int{400},
	},
	// Chunked framing errors: net/http finds them only while the handler
	// reads the body.
	{
		name: "bad chunk size",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		std:  []int{statusBodyErr}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "chunk size with 0x prefix",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
		std:  []int{statusBodyErr}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "chunk size overflow",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
		std:  []int{statusBodyErr}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "chunk size line with bare LF",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
		std:  []int{statusBodyErr}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "chunk data longer than size",
		raw:  "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
		std:  []int{statusBodyErr}, stdCalls: 1, guard: []int{400},
	},
	// Field syntax.
	{
		name: "obs-fold",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-A: b\r\n c\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "obs-fold in Content-Length",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n 5\r\n\r\nhello",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "obs-fold hiding Transfer-Encoding",
		raw:  "POST / HTTP/1.1\r\n" + host + "X-A: b\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "whitespace before first field",
		raw:  "GET / HTTP/1.1\r\n X-A: b\r\n" + host + "\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "NUL in field value",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-A: b\x00c\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "NUL in field name",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-\x00A: b\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "CR in field value",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-A: b\rc\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "control char in field value",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-A: b\x01c\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "space before colon",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-A : b\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "empty field name",
		raw:  "GET / HTTP/1.1\r\n" + host + ": b\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "bare LF line endings",
		raw:  "GET / HTTP/1.1\n" + "Host: app.local\n\n",
		std:  []int{200}, stdCalls: 1, guard: []int{400},
	},
	{
		name: "oversize header section",
		raw:  "GET / HTTP/1.1\r\n" + host + bigHeader + "\r\n",
		std:  []int{431}, guard: []int{431},
	},
	// Host.
	{
		name: "missing Host in HTTP/1.1",
		raw:  "GET / HTTP/1.1\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "two Host fields",
		raw:  "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	{
		name: "invalid Host",
		raw:  "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		std:  []int{400}, guard: []int{400},
	},
	// Pipelines: the smuggled request is refused, what came before is not.
	{
		name: "valid request then CL+TE",
		raw: "GET /first HTTP/1.1\r\n" + host + "\r\n" +
			"POST / HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		std: []int{200, 200}, stdCalls: 2, guard: []int{200, 400}, guardCalls: 1,
	},
	{
		name: "OPTIONS * answered by net/http, then obs-fold",
		raw: "OPTIONS * HTTP/1.1\r\n" + host + "\r\n" +
			"GET / HTTP/1.1\r\n" + host + "X-A: b\r\n c\r\n\r\n",
		std: []int{200, 200}, stdCalls: 1, guard: []int{200, 400},
	},
	{
		name: "OPTIONS * with CL+TE, then a request",
		raw: "OPTIONS * HTTP/1.1\r\n" + host + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" +
			"GET / HTTP/1.1\r\n" + host + "\r\n",
		std: []int{200, 200}, stdCalls: 1, guard: []int{200, 400},
	},

	// Controls: well-formed requests must reach next.
	{
		name: "control: chunked POST",
		raw:  "POST /upload HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: chunked POST with trailers",
		raw:  "POST /grpc HTTP/1.1\r\n" + host + "Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: Content-Length POST",
		raw:  "POST /form HTTP/1.1\r\n" + host + "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: TE trailers",
		raw:  "GET /svc.Method HTTP/1.1\r\n" + host + "TE: trailers\r\nConnection: TE\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: identical duplicate CL",
		raw:  "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: HTTP/1.0 without Host",
		raw:  "GET / HTTP/1.0\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: obs-text in a value",
		raw:  "GET / HTTP/1.1\r\n" + host + "X-Name: caf\xc3\xa9\r\n\r\n",
		std:  []int{200}, stdCalls: 1, guard: []int{200}, guardCalls: 1,
	},
	{
		name: "control: keep-alive pipeline",
		raw: "GET /a HTTP/1.1\r\n" + host + "\r\n" +
			"POST /b HTTP/1.1\r\n" + host + "Content-Length: 3\r\n\r\nabc" +
			"POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n" +
			"OPTIONS * HTTP/1.1\r\n" + host + "\r\n" +
			"PUT /d HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n",
		std: []int{200, 200, 200, 200, 200}, stdCalls: 4, guard: []int{200, 200, 200, 200, 200}, guardCalls: 4,
	},
	{
		name: "control: CRLF after a POST body (tolerated by net/http)",
		raw: "POST /a HTTP/1.1\r\n" + host + "Content-Length: 3\r\n\r\nabc\r\n" +
			"GET /b HTTP/1.1\r\n" + host + "\r\n",
		std: []int{200, 200}, stdCalls: 2, guard: []int{200, 200}, guardCalls: 2,
	},
}

// TestNetHTTPBaseline pins down what net/http does on its own with each raw
// request; the comment at the top of guard.go relies on it.
func TestNetHTTPBaseline(t *testing.T) {
	h := &recordingHandler{}
	addr := startServer(t, h, plainServer)
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			h.calls.Store(0)
			res := exchange(t, addr, tc.raw, len(tc.std))
			if res.readErrors != nil {
				t.Fatalf("reading responses: %v (got %v)", res.readErrors, res.statuses)
			}
			if fmt.Sprint(res.statuses) != fmt.Sprint(tc.std) {
				t.Errorf("statuses = %v, want %v (bodies %q)", res.statuses, tc.std, res.bodies)
			}
			if got := int(h.calls.Load()); got != tc.stdCalls {
				t.Errorf("handler called %d times, want %d", got, tc.stdCalls)
			}
		})
	}
}

// TestSmugglingRejectedByServerStack sends every malformed request over a
// real loopback TCP connection to
// http.Server{Handler: Guard(next), MaxHeaderBytes: 64 KiB} (with
// InspectListener and ConnContext) and checks that it is refused with a
// 4xx/5xx status and that next never sees it, while the controls reach
// next.
//
// Statuses: 400 or 431 for everything Guard or net/http refuses as
// malformed, except unsupported transfer codings, which net/http answers
// with 501 Not Implemented (RFC 9112 §6.1) before any handler runs.
func TestSmugglingRejectedByServerStack(t *testing.T) {
	next := &recordingHandler{}
	addr := startServer(t, next, guardInspected)
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			next.calls.Store(0)
			res := exchange(t, addr, tc.raw, len(tc.guard))
			if res.readErrors != nil {
				t.Fatalf("reading responses: %v (got %v)", res.readErrors, res.statuses)
			}
			if fmt.Sprint(res.statuses) != fmt.Sprint(tc.guard) {
				t.Fatalf("statuses = %v, want %v (bodies %q)", res.statuses, tc.guard, res.bodies)
			}
			if got := int(next.calls.Load()); got != tc.guardCalls {
				t.Errorf("next called %d times, want %d", got, tc.guardCalls)
			}
			last := len(res.statuses) - 1
			switch st := res.statuses[last]; {
			case st == http.StatusOK:
			case st == 400 || st == 431 || st == 501:
				if !res.closed {
					t.Errorf("connection left open after a %d refusal", st)
				}
			default:
				t.Errorf("refused with %d, want 400, 431 or 501", st)
			}
			// Where net/http let the request through, the refusal is
			// Guard's and says so.
			for i, st := range res.statuses {
				if st != http.StatusOK && i < len(tc.std) && tc.std[i] != st && res.proxyErrs[i] == "" {
					t.Errorf("response %d: Guard refusal without %s", i, HeaderProxyError)
				}
			}
		})
	}
}

// TestGuardWithoutInspection documents the limit of Guard on its own: the
// requests net/http normalises look valid once parsed.
func TestGuardWithoutInspection(t *testing.T) {
	next := &recordingHandler{}
	addr := startServer(t, next, guardOnly)
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			next.calls.Store(0)
			res := exchange(t, addr, tc.raw, len(tc.std))
			if res.readErrors != nil {
				t.Fatalf("reading responses: %v", res.readErrors)
			}
			// Without inspection Guard adds nothing over net/http for
			// these requests.
			if fmt.Sprint(res.statuses) != fmt.Sprint(tc.std) {
				t.Errorf("statuses = %v, want net/http's %v", res.statuses, tc.std)
			}
			if got := int(next.calls.Load()); got != tc.stdCalls {
				t.Errorf("next called %d times, want %d", got, tc.stdCalls)
			}
		})
	}
}

// Controls must arrive intact: body, trailers and TE: trailers.
func TestGuardedControlsArriveIntact(t *testing.T) {
	next := &recordingHandler{}
	addr := startServer(t, next, guardInspected)
	tests := []struct {
		raw, want string
	}{
		{
			"POST /upload HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
			`POST /upload te="" body="hello world" trailer=map[]`,
		},
		{
			"POST /grpc HTTP/1.1\r\n" + host + "Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
			`POST /grpc te="" body="hello" trailer=map["X-Sum":["5"]]`,
		},
		{
			"GET /svc.Method HTTP/1.1\r\n" + host + "TE: trailers\r\nConnection: TE\r\n\r\n",
			`GET /svc.Method te="trailers" body="" trailer=map[]`,
		},
	}
	for _, tt := range tests {
		res := exchange(t, addr, tt.raw, 1)
		if res.readErrors != nil || len(res.bodies) != 1 || res.bodies[0] != tt.want {
			t.Errorf("got %q (err %v), want %q", res.bodies, res.readErrors, tt.want)
		}
	}
}

// A hijacked connection (CONNECT, WebSocket) keeps working through
// InspectConn even though what follows is not HTTP.
func TestInspectedHijack(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw) // echo
	})
	addr := startServer(t, next, guardInspected)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(conn, "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	payload := "\x00\x00\x00\x08\x04\xd2\x16\x2f binary after CONNECT\r\n\r\n"
	io.WriteString(conn, payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != payload {
		t.Fatalf("echo = %q, %v", got, err)
	}
}
