// Package h1server is a lean HTTP/1.1 server for the app side of the
// client sidecar. net/http's server reads each request through
// textproto (a map and strings per field), a context and a deadline
// dance per request, and in the sidecar the smuggling inspector
// (internal/httpx) parsed the same bytes a second time; together they
// were the largest block of the client sidecar's CPU
// (docs/benchmarks.md, "Where a request's CPU goes").
//
// Here the goroutine that accepted the connection reads each request
// head from one bufio.Reader, parses it once, strictly (CRLF only, token
// names, no control bytes, one Host, one framing), builds the
// *http.Request the handler chain takes, and writes the response with a
// ResponseWriter that follows net/http's framing rules.
//
// What it does not serve goes to Config.Fallback from the start of the
// head it declined, with the bytes already read: upgrades, CONNECT,
// Expect, HTTP/1.0, declared request trailers, OPTIONS *, heads larger
// than the buffer, and every head it would refuse (conflicting or
// doubled framing, obs-fold, bare LF or CR, invalid bytes, no Host). The
// fallback (net/http behind the framing inspector in the sidecar)
// answers those as it always did, so the lean server's acceptance is a
// strict subset of the old path's: FuzzParseHead checks it against
// http.ReadRequest.
package h1server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Config is a Server's configuration.
type Config struct {
	// Handler serves every request.
	Handler http.Handler
	// Fallback takes over a connection from the start of a request this
	// server does not serve (its Read returns the bytes already read
	// first). Required.
	Fallback func(net.Conn)
	// ConnContext makes the base context of a connection's requests.
	ConnContext func(context.Context, net.Conn) context.Context
	// ReadHeaderTimeout bounds reading a request head; IdleTimeout the
	// wait for the next request on a keep-alive connection (0: none).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// MaxHeaderBytes: larger heads go to the fallback (which answers 431).
	MaxHeaderBytes int
	// Log receives handler panics (nil: slog.Default()).
	Log *slog.Logger
}

// bufSize is the read buffer of a connection and the largest head served
// here.
const bufSize = 4096

// Server serves HTTP/1.1 connections handed to ServeConn.
type Server struct {
	cfg   Config
	dates dateCache

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutdown atomic.Bool
}

// New returns a server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Server{cfg: cfg, conns: make(map[*conn]struct{})}
}

func (s *Server) shuttingDown() bool { return s.shutdown.Load() }

func (s *Server) date() []byte { return s.dates.get() }

// Connection states for Shutdown.
const (
	stateActive int32 = iota
	stateIdle
	stateClosed
)

type conn struct {
	srv   *Server
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	ctx   context.Context
	raddr string
	state atomic.Int32
	// deadline: a read deadline is set on nc.
	deadline bool

	// The watch for the app's disconnect (see watch): one goroutine per
	// connection, armed per request. watching: armed and not yet
	// reported; while it is, the watch goroutine owns br's reading.
	watching bool
	arm      chan struct{}
	report   chan error // one per arm; closed when the goroutine ends
	gone     atomic.Bool
	cancel   context.CancelFunc

	pending []byte
	header  http.Header // the response header, cleared between requests
	resp    response
}

var errWriteFailed = errors.New("h1server: writing the response failed")

// ServeConn serves nc until it closes, fails, or goes to the fallback;
// it closes nc unless the fallback took it.
func (s *Server) ServeConn(nc net.Conn) {
	c := &conn{
		srv:   s,
		nc:    nc,
		br:    bufio.NewReaderSize(nc, bufSize),
		bw:    bufio.NewWriterSize(nc, bufSize),
		raddr: nc.RemoteAddr().String(),
	}
	c.ctx = context.Background()
	if s.cfg.ConnContext != nil {
		c.ctx = s.cfg.ConnContext(c.ctx, nc)
	}
	if !s.add(c) {
		nc.Close()
		return
	}
	defer s.remove(c)
	if c.serve() {
		return // the fallback has it
	}
	nc.Close()
	c.stopWatch()
}

func (s *Server) add(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops new connections, closes idle ones, lets the others
// finish their request, and returns when none is left or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdown.Store(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			if c.state.CompareAndSwap(stateIdle, stateClosed) {
				c.nc.Close()
			}
		}
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// serve runs the request loop; it reports whether the connection went to
// the fallback.
func (c *conn) serve() bool {
	first := true
	for {
		head, err := c.readHead(first)
		first = false
		if err != nil {
			var fe *fallbackError
			if errors.As(err, &fe) {
				return c.handOff()
			}
			return false
		}
		p, err := parseHead(head)
		if err != nil {
			return c.handOff()
		}
		if p.chunked {
			rest, _ := c.br.Peek(c.br.Buffered())
			if !chunksValidSoFar(rest[len(head):]) {
				return c.handOff()
			}
		}
		c.br.Discard(len(head))
		if !c.serveRequest(&p) {
			return false
		}
		if c.srv.shuttingDown() {
			return false
		}
	}
}

// readHead waits for the next request head and returns it, still in the
// read buffer. Deadlines cost a timer update each, so they are set only
// where they bound a wait: the idle wait for the first byte, and the
// rest of a head that did not arrive with it (the first head on a
// connection is bounded from the start). A head that arrives in one
// piece costs one deadline and one clear.
func (c *conn) readHead(first bool) ([]byte, error) {
	s := c.srv
	switch {
	case first:
		c.setDeadline(s.cfg.ReadHeaderTimeout)
	case c.watching:
		// The watch has been peeking since the request's body ended:
		// its read is the wait for the next head. If that head came
		// during the response, the connection was never idle (Shutdown
		// must not close it with the head read).
		var err error
		select {
		case err = <-c.report:
		default:
			if !c.state.CompareAndSwap(stateActive, stateIdle) {
				return nil, net.ErrClosed
			}
			c.setDeadline(s.cfg.IdleTimeout)
			err = <-c.report
		}
		c.watching = false
		if err != nil {
			return nil, err
		}
	case c.br.Buffered() == 0:
		if !c.state.CompareAndSwap(stateActive, stateIdle) {
			return nil, net.ErrClosed
		}
		c.setDeadline(s.cfg.IdleTimeout)
	}
	if c.deadline && c.br.Buffered() > 0 {
		c.setDeadline(0)
	}
	limit := bufSize
	if m := s.cfg.MaxHeaderBytes; m > 0 && m < limit {
		limit = m
	}
	scanned := 0
	headTimer := first
	for {
		b, err := c.br.Peek(max(c.br.Buffered(), 1))
		if !first && c.state.Load() != stateActive && !c.state.CompareAndSwap(stateIdle, stateActive) {
			return nil, net.ErrClosed // closed by Shutdown while idle
		}
		if err != nil {
			return nil, err
		}
		end, err := findHeadEnd(b, scanned)
		if err != nil {
			return nil, err
		}
		if end > 0 {
			if end > limit {
				return nil, errHeaderTooLarge
			}
			if c.deadline {
				c.setDeadline(0)
			}
			return b[:end], nil
		}
		if len(b) >= limit {
			return nil, errHeadTooLarge
		}
		if !headTimer {
			headTimer = true
			c.setDeadline(s.cfg.ReadHeaderTimeout)
		}
		scanned = max(len(b)-1, 0)
		if _, err := c.br.Peek(len(b) + 1); err != nil && c.br.Buffered() == len(b) {
			return nil, err
		}
	}
}

// setDeadline sets the read deadline d from now, or clears it (d 0).
func (c *conn) setDeadline(d time.Duration) {
	if d <= 0 {
		if c.deadline {
			c.nc.SetReadDeadline(time.Time{})
			c.deadline = false
		}
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(d))
	c.deadline = true
}

// serveRequest runs the handler for one request and ends its response;
// it reports whether the connection can carry another.
func (c *conn) serveRequest(p *parsed) (keep bool) {
	p.req.RemoteAddr = c.raddr
	ctx, cancel := context.WithCancel(c.ctx)
	c.cancel = cancel
	defer cancel()
	if c.arm == nil {
		c.startWatch()
	}
	r := p.req.WithContext(ctx)
	var b *body
	switch {
	case p.chunked || p.length > 0:
		b = &body{br: c.br, req: r, chunked: p.chunked, n: p.length, onEOF: c.watch}
		r.Body = b
	default:
		r.Body = http.NoBody
		c.watch()
	}
	if cap(c.pending) == 0 {
		c.pending = make([]byte, 0, bufSize)
	}
	// The writer is reused: like net/http's, it may not be used after
	// the handler returns. So is its header map (nothing in the chain
	// keeps it past the handler); one that held many fields is dropped
	// rather than cleared.
	if c.header == nil {
		c.header = make(http.Header)
	}
	w := &c.resp
	*w = response{c: c, req: r, header: c.header, pending: c.pending[:0]}
	defer c.resetHeader()
	ok := c.runHandler(w, r)
	if b != nil {
		// Whoever still holds the body (a request-body writer the
		// handler started) gets an error from now on, as from net/http,
		// and its end no longer starts a watch. The watch, if the body
		// ended and started it, goes on through the response and the
		// idle wait: readHead takes its result.
		b.mu.Lock()
		b.closed, b.onEOF = true, nil
		b.mu.Unlock()
	}
	if !ok {
		c.bw.Flush() // what was committed, as net/http's final flush
		return false
	}
	keep = w.finish()
	if c.gone.Load() {
		return false
	}
	if b != nil && keep {
		keep = b.drain()
	}
	return keep && !r.Close
}

// runHandler calls the handler; it reports false if the handler
// panicked (the connection is then closed, as net/http does).
func (c *conn) runHandler(w *response, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				c.srv.cfg.Log.Error("h1server: panic serving", "remote", c.raddr, "panic", v)
			}
		}
	}()
	c.srv.cfg.Handler.ServeHTTP(w, r)
	return true
}

// maxReusedFields: a response header map that held more fields is not
// kept for the connection's next request (clearing costs its capacity).
const maxReusedFields = 32

// resetHeader empties the response header map for the next request.
func (c *conn) resetHeader() {
	if len(c.header) > maxReusedFields {
		c.header = nil
		return
	}
	clear(c.header)
}

// watch starts watching for the app's disconnect once the request body
// has been read (or there is none), as net/http's background read does:
// an EOF or error cancels the request's context. Bytes that arrive
// (a pipelined request) end the watch and stay in the buffer.
//
// The watch runs on one goroutine per connection (startWatch), armed
// here and not interrupted when the handler returns: its read goes on
// through the response and becomes the idle wait for the next head
// (readHead), which saves a goroutine, a deadline update and a read
// per request over a watch that is started and stopped around the
// handler.
func (c *conn) watch() {
	if c.watching || c.br.Buffered() > 0 {
		return
	}
	c.watching = true
	c.arm <- struct{}{}
}

// startWatch starts the connection's watch goroutine; stopWatch ends it.
func (c *conn) startWatch() {
	c.arm = make(chan struct{}, 1)
	c.report = make(chan error, 1)
	go c.watchLoop()
}

func (c *conn) watchLoop() {
	defer close(c.report)
	for range c.arm {
		_, err := c.br.Peek(1)
		if err != nil && !isTimeout(err) {
			c.gone.Store(true)
			c.cancel()
		}
		c.report <- err
	}
}

// stopWatch interrupts an armed watch, ends the watch goroutine and
// waits for it.
func (c *conn) stopWatch() {
	if c.arm == nil {
		return
	}
	if c.watching {
		c.watching = false
		c.nc.SetReadDeadline(aLongTimeAgo)
		c.deadline = true
		<-c.report
	}
	close(c.arm)
	<-c.report
	c.arm = nil
}

var aLongTimeAgo = time.Unix(1, 0)

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// handOff gives the connection, with the bytes already read, to the
// fallback.
func (c *conn) handOff() bool {
	c.stopWatch()
	c.nc.SetReadDeadline(time.Time{})
	c.deadline = false
	n := c.br.Buffered()
	buf, _ := c.br.Peek(n)
	pc := &prefixConn{Conn: c.nc, prefix: append([]byte(nil), buf...)}
	if cw, ok := c.nc.(closeWriter); ok {
		c.srv.cfg.Fallback(&prefixConnCW{pc, cw})
	} else {
		c.srv.cfg.Fallback(pc)
	}
	return true
}

type closeWriter interface{ CloseWrite() error }

// prefixConn reads prefix before the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the wrapped connection (socket options, the
// transparent target).
func (c *prefixConn) NetConn() net.Conn { return c.Conn }

// ReadFrom keeps the connection's fast path for writes.
func (c *prefixConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }

type prefixConnCW struct {
	*prefixConn
	cw closeWriter
}

func (c *prefixConnCW) CloseWrite() error { return c.cw.CloseWrite() }
