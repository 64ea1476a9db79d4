package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// http1Target drives http1 with a lean HTTP/1.1 client: each connection is
// a raw TCP connection with a bufio.Reader, the request is written from
// bytes prepared once, and the worker that owns the connection for the
// request reads and parses the response itself.
//
// Why not net/http: profiled against a tiny Go app on loopback (closed
// loop, 32 connections, docs/benchmarks.md "The load generator"),
// net/http's client cost about 50 allocations and three goroutine
// hand-offs per request (worker -> writeLoop -> readLoop -> worker), plus
// the engine's per-request context; the generator reached about half of
// fortio's request rate and was the bottleneck of the direct path. This
// client does one write and usually one read system call per request and
// no allocation, and it validates as much as the bench needs: the status
// line, the framing (Content-Length, chunked, or until close), the
// keep-alive decision and the echoed size of a POST.
//
// With as many connections as workers (the default) worker i owns
// connection i. With fewer, connections are checked out of a pool and a
// worker waits for one (that wait counts in an open loop's latency).
type http1Target struct {
	addr    string
	req     []byte // the whole request, head and body
	payload int
	timeout time.Duration
	conns   []*h1Conn
	free    chan *h1Conn // nil when every worker owns a connection

	// loop: the request loops run on event loops over raw sockets
	// (proto_http1_loop_linux.go) instead of a goroutine per worker.
	loop bool

	// aborted is set once the run's request context ends: in-flight reads
	// and writes are cut by a past deadline, and no new request starts.
	aborted   atomic.Bool
	watchOnce sync.Once
	stopWatch func() bool
	runDone   <-chan struct{}
}

// h1Conn is one connection slot. Only the worker holding the slot uses c
// and br; mu orders deadline changes against abort. While an event loop
// owns the slot, its connection is the raw socket fd instead (-1: none).
type h1Conn struct {
	mu sync.Mutex
	c  net.Conn
	br *bufio.Reader
	fd int
}

// h1ReadBuffer is the size of a connection's read buffer, and so the
// longest status or header line accepted.
const h1ReadBuffer = 16 << 10

// h1MaxHeaders bounds the header lines of one response.
const h1MaxHeaders = 256

func newHTTP1Target(cfg Config) (*http1Target, error) {
	u, addr, err := parseHTTPTarget(cfg.Target)
	if err != nil {
		return nil, err
	}
	t := &http1Target{addr: addr, payload: cfg.Payload, timeout: cfg.Timeout}
	var b bytes.Buffer
	method := "GET"
	if cfg.Payload > 0 {
		method = "POST"
	}
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: quicmesh-bench\r\n", method, u.RequestURI(), u.Host)
	if cfg.Payload > 0 {
		fmt.Fprintf(&b, "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n", cfg.Payload)
	}
	b.WriteString("\r\n")
	b.Write(bytes.Repeat([]byte("x"), cfg.Payload))
	t.req = b.Bytes()
	t.conns = make([]*h1Conn, cfg.Connections)
	for i := range t.conns {
		t.conns[i] = &h1Conn{fd: -1}
	}
	if cfg.Connections < cfg.Concurrency {
		t.free = make(chan *h1Conn, len(t.conns))
		for _, c := range t.conns {
			t.free <- c
		}
	}
	t.loop = h1EventLoops && cfg.Clock == SystemClock && t.free == nil
	return t, nil
}

func (t *http1Target) requester(worker int) requester {
	r := &http1Requester{t: t}
	if t.free == nil {
		r.own = t.conns[worker]
	}
	return r
}

func (t *http1Target) looping() bool { return t.loop }

func (t *http1Target) preconnect(ctx context.Context) {
	if t.loop {
		t.rawPreconnect(ctx)
		return
	}
	var wg sync.WaitGroup
	for _, c := range t.conns {
		wg.Go(func() {
			if err := t.dial(ctx, c); err == nil {
				c.c.SetDeadline(time.Time{})
			}
		})
	}
	wg.Wait()
}

func (t *http1Target) close() {
	if t.stopWatch != nil {
		t.stopWatch()
	}
	for _, c := range t.conns {
		c.mu.Lock()
		if c.c != nil {
			c.c.Close()
			c.c = nil
		}
		c.mu.Unlock()
	}
}

// watch makes the end of ctx (the run's request context, the same for
// every request) abort the requests in flight; it is set up by the first
// request instead of one context per request.
func (t *http1Target) watch(ctx context.Context) {
	t.watchOnce.Do(func() {
		t.runDone = ctx.Done()
		t.stopWatch = context.AfterFunc(ctx, t.abort)
	})
}

func (t *http1Target) abort() {
	t.aborted.Store(true)
	past := time.Unix(1, 0)
	for _, c := range t.conns {
		c.mu.Lock()
		if c.c != nil {
			c.c.SetDeadline(past)
		}
		c.mu.Unlock()
	}
}

// dial connects slot c, which holds no connection, and arms the deadline
// of its first request. It fails if the run was aborted.
func (t *http1Target) dial(ctx context.Context, c *h1Conn) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.aborted.Load() {
		nc.Close()
		return context.Canceled
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	c.c = nc
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, h1ReadBuffer)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

// drop closes c's connection after a failure or a response that ends it.
func (c *h1Conn) drop() {
	c.mu.Lock()
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
	c.mu.Unlock()
}

// arm sets the deadline of the next request on c's connection, unless the
// run was aborted.
func (t *http1Target) arm(c *h1Conn, deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.aborted.Load() {
		return context.Canceled
	}
	return c.c.SetDeadline(deadline)
}

type http1Requester struct {
	t   *http1Target
	own *h1Conn // the worker's own connection, or nil: use the pool
}

func (r *http1Requester) close() {}

// selfTimed marks http1Requester as enforcing the per-request timeout
// itself (see selfTimedRequester).
func (r *http1Requester) selfTimed() {}

// errPoolWait is a request that timed out waiting for a free connection.
var errPoolWait = fmt.Errorf("no free connection in time: %w", context.DeadlineExceeded)

// do performs one request. ctx is the run's request context (see
// selfTimedRequester): the per-request timeout is a socket deadline.
func (r *http1Requester) do(ctx context.Context) (int64, error) {
	t := r.t
	t.watch(ctx)
	deadline := time.Now().Add(t.timeout)
	c := r.own
	if c == nil {
		var err error
		if c, err = t.checkout(deadline); err != nil {
			return 0, err
		}
		defer func() { t.free <- c }()
	}
	// A server may close a keep-alive connection between two requests
	// (an idle timeout, or python3 -m http.server closing after every
	// response); the client notices only when the next request fails on
	// it. Like net/http's Transport does for its pooled connections, a
	// request that fails that way on a connection that had already
	// carried one is sent once more on a new connection; its latency
	// includes both tries. A failure on a new connection is the request's
	// own.
	for attempt := 0; ; attempt++ {
		fresh := c.c == nil
		if fresh {
			dctx, cancel := context.WithDeadline(ctx, deadline)
			err := t.dial(dctx, c)
			cancel()
			if err != nil {
				return 0, err
			}
		} else if err := t.arm(c, deadline); err != nil {
			return 0, err
		}
		n, err := t.roundTrip(c)
		if err != nil && !fresh && attempt == 0 && errors.Is(err, errConnLost) && !t.aborted.Load() {
			continue
		}
		return n, err
	}
}

// checkout waits for a free pooled connection until deadline or the end
// of the run.
func (t *http1Target) checkout(deadline time.Time) (*h1Conn, error) {
	select {
	case c := <-t.free:
		return c, nil
	default:
	}
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case c := <-t.free:
		return c, nil
	case <-t.runDone:
		return nil, context.Canceled
	case <-tm.C:
		return nil, errPoolWait
	}
}

// roundTrip writes the request on c and reads the whole response. Any
// error leaves c without a connection, so the next request dials.
func (t *http1Target) roundTrip(c *h1Conn) (int64, error) {
	if _, err := c.c.Write(t.req); err != nil {
		c.drop()
		if isConnLoss(err) {
			return 0, fmt.Errorf("%w: %w", errConnLost, err)
		}
		return 0, err
	}
	n, keep, status, err := readResponse(c.br)
	return t.conclude(c, n, keep, status, err)
}

// conclude finishes a request on c whose response was read (n body bytes,
// keep: c may carry another request) or failed with err.
func (t *http1Target) conclude(c *h1Conn, n int64, keep bool, status int, err error) (int64, error) {
	if err != nil {
		c.drop()
		return n, err
	}
	if !keep {
		// The server closes the connection after this response
		// (Connection: close, HTTP/1.0 without keep-alive, or a body
		// delimited by the close): the next request dials.
		c.drop()
	}
	if status >= 300 {
		return n, httpStatusError{status}
	}
	if t.payload > 0 && n != int64(t.payload) {
		return n, badResponseError{fmt.Sprintf("echoed %d bytes of %d", n, t.payload)}
	}
	return n, nil
}

// isConnLoss reports whether err says the peer had closed or reset the
// connection.
func isConnLoss(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

// readResponse reads one HTTP/1.x response from br, skipping interim
// (1xx) responses, and discards its body. It returns the body length,
// whether the connection may carry another request, and the status code.
// A connection found closed before any byte of the response is errConnLost.
func readResponse(br *bufio.Reader) (n int64, keep bool, status int, err error) {
	for first := true; ; first = false {
		var h respHead
		if err := h.read(br); err != nil {
			if first && h.empty && isConnLoss(err) {
				return 0, false, 0, fmt.Errorf("%w: %w", errConnLost, err)
			}
			return 0, false, 0, err
		}
		if h.status >= 100 && h.status < 200 {
			if h.status == 101 {
				return 0, false, h.status, badResponseError{"unexpected 101 Switching Protocols"}
			}
			continue // 100 Continue, 103 Early Hints: the response follows
		}
		n, err := h.discardBody(br)
		return n, h.keepAlive() && err == nil && !h.untilClose(), h.status, err
	}
}

// respHead is what the bench needs from a response head.
type respHead struct {
	empty        bool // nothing at all was read
	minor        byte // HTTP/1.minor
	status       int
	length       int64 // -1: none given
	chunked      bool
	close, keep  bool // Connection: close / keep-alive
	otherCodings bool // Transfer-Encoding other than chunked
}

var (
	hdrContentLength    = []byte("content-length")
	hdrTransferEncoding = []byte("transfer-encoding")
	hdrConnection       = []byte("connection")
	tokChunked          = []byte("chunked")
	tokClose            = []byte("close")
	tokKeepAlive        = []byte("keep-alive")
)

// read parses the status line and headers.
func (h *respHead) read(br *bufio.Reader) error {
	h.length = -1
	h.empty = true
	line, err := readLine(br)
	if err != nil {
		if len(line) > 0 || br.Buffered() > 0 {
			h.empty = false
		}
		return err
	}
	h.empty = false
	// "HTTP/1.x SSS reason"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return badResponseError{fmt.Sprintf("malformed status line %q", clip(line))}
	}
	h.minor = line[7]
	st, ok := atoiPositive(line[9:12])
	if !ok || st < 100 || st > 999 {
		return badResponseError{fmt.Sprintf("malformed status line %q", clip(line))}
	}
	h.status = int(st)
	for i := 0; ; i++ {
		if i == h1MaxHeaders {
			return badResponseError{"more than " + strconv.Itoa(h1MaxHeaders) + " header lines"}
		}
		line, err := readLine(br)
		if err != nil {
			return eofIsUnexpected(err)
		}
		if len(line) == 0 {
			return nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return badResponseError{fmt.Sprintf("malformed header line %q", clip(line))}
		}
		key, val := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(key, hdrContentLength):
			v, ok := atoiPositive(val)
			if !ok || (h.length >= 0 && h.length != v) {
				return badResponseError{fmt.Sprintf("bad Content-Length %q", clip(val))}
			}
			h.length = v
		case bytes.EqualFold(key, hdrTransferEncoding):
			// The last coding decides the framing: only chunked is
			// something this client can delimit.
			last := val
			if i := bytes.LastIndexByte(val, ','); i >= 0 {
				last = bytes.TrimSpace(val[i+1:])
			}
			if bytes.EqualFold(last, tokChunked) {
				h.chunked = true
			} else {
				h.otherCodings = true
			}
		case bytes.EqualFold(key, hdrConnection):
			for tok := range bytes.SplitSeq(val, []byte(",")) {
				tok = bytes.TrimSpace(tok)
				h.close = h.close || bytes.EqualFold(tok, tokClose)
				h.keep = h.keep || bytes.EqualFold(tok, tokKeepAlive)
			}
		}
	}
}

// keepAlive reports whether the server keeps the connection open after
// this response (RFC 9112 section 9.3).
func (h *respHead) keepAlive() bool {
	if h.close {
		return false
	}
	return h.minor != '0' || h.keep
}

// untilClose reports whether the body is delimited by the connection's
// close (neither chunked nor a Content-Length).
func (h *respHead) untilClose() bool {
	if h.status == 204 || h.status == 304 {
		return false
	}
	return !h.chunked && (h.otherCodings || h.length < 0)
}

// discardBody reads the body and returns its length.
func (h *respHead) discardBody(br *bufio.Reader) (int64, error) {
	switch {
	case h.status == 204 || h.status == 304:
		return 0, nil
	case h.chunked:
		return discardChunked(br)
	case h.untilClose():
		n, err := io.Copy(io.Discard, br)
		return n, err
	}
	n, err := br.Discard(int(h.length))
	return int64(n), eofIsUnexpected(err)
}

// discardChunked reads a chunked body and its trailer section.
func discardChunked(br *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := readLine(br)
		if err != nil {
			return total, eofIsUnexpected(err)
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		size, ok := hexSize(bytes.TrimSpace(line))
		if !ok {
			return total, badResponseError{fmt.Sprintf("bad chunk size %q", clip(line))}
		}
		if size == 0 {
			for i := 0; ; i++ {
				if i == h1MaxHeaders {
					return total, badResponseError{"too many trailer lines"}
				}
				line, err := readLine(br)
				if err != nil {
					return total, eofIsUnexpected(err)
				}
				if len(line) == 0 {
					return total, nil
				}
			}
		}
		n, err := br.Discard(int(size))
		total += int64(n)
		if err != nil {
			return total, eofIsUnexpected(err)
		}
		crlf, err := readLine(br)
		if err != nil {
			return total, eofIsUnexpected(err)
		}
		if len(crlf) != 0 {
			return total, badResponseError{"chunk not followed by CRLF"}
		}
	}
}

// readLine returns the next line without its CRLF (or LF). The slice is
// valid until the next read from br.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, badResponseError{fmt.Sprintf("line longer than %d bytes", h1ReadBuffer)}
	}
	if err != nil {
		return line, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// atoiPositive parses a non-empty decimal number of at most 18 digits.
func atoiPositive(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// hexSize parses a chunk size of at most 15 hex digits.
func hexSize(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | int64(d)
	}
	return v, true
}

// clip shortens b for an error message.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}
