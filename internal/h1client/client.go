// Package h1client is a lean HTTP/1.1 client for the requests a sidecar
// sends to the app beside it. net/http's Transport runs two goroutines
// per connection (readLoop, writeLoop) and hands every request and
// response between them and the caller through channels, with a context
// and a few timers per request; on the inbound sidecar that was the
// largest block of its CPU (docs/benchmarks.md, "Where a request's CPU
// goes"). Here the calling goroutine writes a request without a body and
// reads the response head itself on a pooled keep-alive connection; the
// body is read from the same buffer by whoever reads resp.Body, and the
// connection goes back to the pool at the body's end. A request with a
// body gets one goroutine that writes it, so the app may answer before
// the body is complete (full duplex) without a deadlock.
//
// What the package does not do falls back to another RoundTripper
// (Config.Fallback, net/http's Transport in the sidecar): see
// Client.fallbackReason for the list.
//
// The app is a party of its own: responses are parsed strictly (see
// parseFields and responseFraming) and what is refused is a
// *ProtocolError or *HeaderTooLargeError.
package h1client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Config sets up a Client. Zero values take the defaults of net/http's
// Transport where it has one.
type Config struct {
	// Dial connects to an app ("tcp", host:port).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxIdleConns bounds idle connections in all; MaxIdleConnsPerHost
	// per app address (default 2, as net/http's).
	MaxIdleConns        int
	MaxIdleConnsPerHost int
	// IdleConnTimeout closes a connection idle that long (0: never).
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response head, and a trailer
	// section (default 1 MiB, as net/http's).
	MaxResponseHeaderBytes int
	// Fallback sends what this client does not support.
	Fallback http.RoundTripper
}

// Client is an http.RoundTripper for plain HTTP/1.1 to local apps.
type Client struct {
	cfg Config

	mu    sync.Mutex
	idle  map[string][]*conn // by address; oldest first
	nidle int
	sweep *time.Timer // armed while a connection is idle
}

// New returns a client.
func New(cfg Config) *Client {
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.MaxIdleConnsPerHost <= 0 {
		cfg.MaxIdleConnsPerHost = http.DefaultMaxIdleConnsPerHost
	}
	if cfg.MaxResponseHeaderBytes <= 0 {
		cfg.MaxResponseHeaderBytes = 1 << 20
	}
	if cfg.Fallback == nil {
		cfg.Fallback = http.DefaultTransport
	}
	return &Client{cfg: cfg, idle: make(map[string][]*conn)}
}

// fallbackReason says why req goes to the fallback transport, or "".
// These are the requests net/http handles with machinery this client
// does not have: the switch to another protocol (Upgrade, CONNECT: the
// inbound side does those itself, on a connection of its own, so they
// should not reach here), Expect: 100-continue (which waits for the app
// before sending the body; the inbound side removes Expect), TLS,
// credentials in the URL, an address without a port, a host name that
// needs IDNA, transfer codings other than chunked.
func fallbackReason(req *http.Request) string {
	switch {
	case req.URL == nil:
		return "no URL"
	case req.URL.Scheme != "http":
		return "scheme"
	case req.Method == http.MethodConnect:
		return "CONNECT"
	case req.URL.User != nil:
		return "userinfo"
	case req.URL.Port() == "":
		return "no port"
	case len(req.Header["Upgrade"]) > 0 || hasToken(req.Header["Connection"], "upgrade"):
		return "upgrade"
	case len(req.Header["Expect"]) > 0:
		return "expect"
	case len(req.TransferEncoding) > 0 && (len(req.TransferEncoding) != 1 || req.TransferEncoding[0] != "chunked"):
		return "transfer-encoding"
	case !isASCII(req.Host) || !isASCII(req.URL.Host):
		return "idna"
	}
	return ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// RoundTrip sends req and returns the response head; the body streams
// from the connection. It closes req.Body, as RoundTripper must, even on
// errors (possibly after returning, from the goroutine writing it).
func (c *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	if fallbackReason(req) != "" {
		return c.cfg.Fallback.RoundTrip(req)
	}
	o, err := prepare(req)
	if err != nil {
		closeBody(req.Body)
		return nil, err
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		closeBody(o.body)
		return nil, err
	}
	if o.body != nil && o.length < 0 && bodyUsuallyAbsent(o.method) {
		if o.body, err = probe(o.body); err != nil {
			return nil, err
		}
	}
	// Without a body the request can be sent again on a fresh
	// connection when a pooled one turns out to be closed (the keep-alive
	// race): always if nothing of it was written, and if it was, when
	// the method is one net/http replays.
	noBody := o.body == nil
	replayable := noBody && (replayableMethod(o.method) || len(req.Header["Idempotency-Key"]) > 0 || len(req.Header["X-Idempotency-Key"]) > 0)
	for attempt := 0; ; attempt++ {
		cn, err := c.getConn(ctx, req.URL.Host, attempt > 0)
		if err != nil {
			closeBody(o.body)
			return nil, fmt.Errorf("h1client: %w", err)
		}
		resp, written, err := c.exchange(ctx, cn, req, o)
		if err == nil {
			return resp, nil
		}
		var nr errNoResponse
		stale := cn.reused && attempt == 0 && ctx.Err() == nil && noBody && (!written || replayable && errors.As(err, &nr))
		if !stale {
			return nil, err
		}
	}
}

// exchange sends o on cn and reads the response head. written reports
// whether any byte of the request may have reached the app.
func (c *Client) exchange(ctx context.Context, cn *conn, req *http.Request, o *outgoing) (*http.Response, bool, error) {
	if o.body == nil {
		cn.start(ctx, 1)
		if err := writeHead(cn.bw, o); err != nil {
			cn.bw.Reset(cn.nc)
			cn.readDone(false)
			return nil, false, err
		}
		n := cn.bw.Buffered()
		if err := cn.bw.Flush(); err != nil {
			written := cn.bw.Buffered() != n
			err = cn.contextErr(fmt.Errorf("h1client: writing request: %w", err))
			cn.readDone(false)
			return nil, written, err
		}
	} else {
		cn.start(ctx, 2)
		wdone := cn.wdone
		go func() {
			err := cn.writeRequest(o)
			cn.writeDone(err)
			close(wdone)
			closeBody(o.body)
		}()
	}
	closeAfter := o.closeAfter
	var hook func(int, textproto.MIMEHeader) error
	if trace := httptrace.ContextClientTrace(ctx); trace != nil {
		hook = trace.Got1xxResponse
	}
	resp, f, err := cn.hr.read(o.method, hook)
	if err != nil {
		err = cn.failure(err) // before readDone: it may end the exchange
		cn.readDone(false)
		return nil, true, err
	}
	resp.Request = req
	cn.closeAfter = closeAfter || f.close
	resp.Body = responseBody(cn, &cn.hr, resp, f)
	if resp.Body == http.NoBody {
		cn.readDone(true)
	}
	return resp, true, nil
}

// responseBody is the body of resp, read from hr's buffer; cn (nil when
// parsing alone) is released at its end.
func responseBody(cn *conn, hr *headReader, resp *http.Response, f framing) io.ReadCloser {
	if f.noBody || (!f.chunked && f.length == 0) {
		return http.NoBody
	}
	b := &body{cn: cn, br: hr.br, resp: resp, hr: hr, chunked: f.chunked, toClose: !f.chunked && f.length < 0}
	if !f.chunked {
		b.n = f.length
	}
	return b
}

// prepare checks req and works out what will be written.
func prepare(req *http.Request) (*outgoing, error) {
	o := &outgoing{method: req.Method, header: req.Header, body: req.Body, trailer: req.Trailer}
	if o.method == "" {
		o.method = http.MethodGet
	}
	if !httpguts.ValidHeaderFieldName(o.method) { // a method is a token
		return nil, fmt.Errorf("h1client: invalid method %q", o.method)
	}
	o.host = req.Host
	if o.host == "" {
		o.host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(o.host) {
		return nil, fmt.Errorf("h1client: invalid Host %q", o.host)
	}
	o.uri = req.URL.RequestURI()
	for i := 0; i < len(o.uri); i++ {
		if c := o.uri[i]; c < ' ' || c == 0x7f {
			return nil, errors.New("h1client: control character in the request URI")
		}
	}
	if o.body == http.NoBody {
		o.body = nil
	}
	switch {
	case o.body == nil:
		if req.ContentLength > 0 {
			return nil, fmt.Errorf("h1client: ContentLength=%d with no body", req.ContentLength)
		}
	case len(req.TransferEncoding) > 0 || req.ContentLength <= 0:
		o.length = -1 // unknown (0 with a body means unknown too, as in net/http)
	default:
		o.length = req.ContentLength
	}
	o.closeAfter = req.Close || hasToken(req.Header["Connection"], "close")
	return o, nil
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		b.Close()
	}
}

// bodyUsuallyAbsent lists the methods whose body of unknown length
// net/http probes before choosing chunked: servers are often confused by
// a chunked GET.
func bodyUsuallyAbsent(method string) bool {
	switch method {
	case "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
		return true
	}
	return false
}

func replayableMethod(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// probeTimeout is how long a body of unknown length is given to show
// whether it is empty (net/http's value).
const probeTimeout = 200 * time.Millisecond

type probeResult struct {
	b   byte
	n   int
	err error
}

// probe reads the first byte of a body of unknown length of a method
// that usually has none, as net/http does: an empty body (an HTTP/3
// request without content-length, typically) is then sent as none. A
// body that has not shown itself after probeTimeout goes out chunked, the
// byte still to come first.
func probe(body io.ReadCloser) (io.ReadCloser, error) {
	ch := make(chan probeResult, 1)
	go func() {
		var b [1]byte
		n, err := body.Read(b[:])
		ch <- probeResult{b: b[0], n: n, err: err}
	}()
	// Usually the body has ended already (an HTTP/3 request whose
	// stream ended with its header): yield to the probe once, and there
	// is its answer, without a timer or a wait.
	runtime.Gosched()
	var r probeResult
	select {
	case r = <-ch:
	default:
		t := time.NewTimer(probeTimeout)
		select {
		case r = <-ch:
			t.Stop()
		case <-t.C:
			return &probedBody{ReadCloser: body, ch: ch}, nil
		}
	}
	if r.n == 0 && r.err == io.EOF {
		body.Close()
		return nil, nil
	}
	if r.n == 0 && r.err != nil {
		body.Close()
		return nil, fmt.Errorf("h1client: reading request body: %w", r.err)
	}
	return &probedBody{ReadCloser: body, first: r, got: true}, nil
}

// probedBody is a body whose first byte probe has read (or is reading).
type probedBody struct {
	io.ReadCloser
	ch    chan probeResult
	first probeResult
	got   bool
	used  bool
}

func (p *probedBody) Read(b []byte) (int, error) {
	if !p.used {
		if !p.got {
			p.first, p.got = <-p.ch, true
		}
		if len(b) == 0 {
			return 0, nil
		}
		p.used = true
		if p.first.n == 1 {
			b[0] = p.first.b
			if p.first.err != nil {
				return 1, p.first.err
			}
			return 1, nil
		}
		return 0, p.first.err
	}
	return p.ReadCloser.Read(b)
}

// getConn returns a pooled connection to addr, or dials one; fresh
// skips the pool. A pooled connection is used only if the app has sent
// nothing on it since: neither its close nor bytes nobody asked for
// (net/http learns the same from the read loop it keeps blocked on
// every idle connection; what comes after this check is the keep-alive
// race RoundTrip retries).
func (c *Client) getConn(ctx context.Context, addr string, fresh bool) (*conn, error) {
	if !fresh {
		for {
			cn := c.take(addr)
			if cn == nil {
				break
			}
			if !cn.alive() {
				cn.abort()
				continue
			}
			cn.reused = true
			return cn, nil
		}
	}
	nc, err := c.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newConn(c, nc, addr), nil
}

// alive reports whether an idle connection is still usable: the app
// has sent nothing on it (no close, no unsolicited bytes).
func (cn *conn) alive() bool {
	if cn.br.Buffered() > 0 {
		return false
	}
	return cn.peek.peekAlive()
}

// take pops the most recently used idle connection to addr, closing
// those idle for longer than IdleConnTimeout.
func (c *Client) take(addr string) *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[addr]
	if len(list) == 0 {
		return nil
	}
	cn := list[len(list)-1]
	list[len(list)-1] = nil
	c.idle[addr] = list[:len(list)-1]
	c.nidle--
	if t := c.cfg.IdleConnTimeout; t > 0 && time.Since(cn.idleAt) >= t {
		// The newest is expired, so all are.
		for _, old := range list[:len(list)-1] {
			old.abort()
		}
		c.nidle -= len(list) - 1
		delete(c.idle, addr)
		cn.abort()
		return nil
	}
	return cn
}

// put keeps cn for another request, within the limits.
func (c *Client) put(cn *conn) {
	c.mu.Lock()
	list := c.idle[cn.key]
	if len(list) >= c.cfg.MaxIdleConnsPerHost || (c.cfg.MaxIdleConns > 0 && c.nidle >= c.cfg.MaxIdleConns) {
		c.mu.Unlock()
		cn.abort()
		return
	}
	cn.idleAt = time.Now()
	c.idle[cn.key] = append(list, cn)
	c.nidle++
	if c.sweep == nil && c.cfg.IdleConnTimeout > 0 {
		c.sweep = time.AfterFunc(c.cfg.IdleConnTimeout, c.sweepIdle)
	}
	c.mu.Unlock()
}

// sweepIdle closes connections idle for IdleConnTimeout, and runs again
// when the next one expires while any is idle.
func (c *Client) sweepIdle() {
	c.mu.Lock()
	now := time.Now()
	timeout := c.cfg.IdleConnTimeout
	var expired []*conn
	next := time.Duration(-1)
	for addr, list := range c.idle {
		i := 0
		for i < len(list) && now.Sub(list[i].idleAt) >= timeout {
			i++
		}
		expired = append(expired, list[:i]...)
		if i == len(list) {
			delete(c.idle, addr)
			continue
		}
		c.idle[addr] = append(list[:0], list[i:]...)
		if d := timeout - now.Sub(c.idle[addr][0].idleAt); next < 0 || d < next {
			next = d
		}
	}
	c.nidle -= len(expired)
	c.sweep = nil
	if next >= 0 {
		c.sweep = time.AfterFunc(next, c.sweepIdle)
	}
	c.mu.Unlock()
	for _, cn := range expired {
		cn.abort()
	}
}

// CloseIdleConnections closes the idle connections; requests in flight
// keep theirs (and close them at their end if the pool is full).
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	var all []*conn
	for _, list := range c.idle {
		all = append(all, list...)
	}
	c.idle = make(map[string][]*conn)
	c.nidle = 0
	if c.sweep != nil {
		c.sweep.Stop()
		c.sweep = nil
	}
	c.mu.Unlock()
	for _, cn := range all {
		cn.abort()
	}
	if ci, ok := c.cfg.Fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// idleCount is the number of idle connections (for tests).
func (c *Client) idleCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nidle
}
