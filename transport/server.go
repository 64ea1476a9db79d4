package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// ServerConfig says how a Server serves the streams of peer connections.
type ServerConfig struct {
	// HeaderTimeout bounds how long a peer may take to send the first
	// bytes of a stream (the tunnel header, or the start of an HTTP/3
	// request). Default 10s.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds the header of an HTTP/3 request. Default
	// 64 KiB.
	MaxHeaderBytes int
	Logger         *slog.Logger
}

// Server is the inbound side of an Endpoint: it hands out the connections
// peers open, and serves each one's streams, telling tunnels from HTTP/3
// requests by their first bytes.
type Server struct {
	ep  *Endpoint
	cfg ServerConfig
	log *slog.Logger

	mu     sync.Mutex
	served map[*ServerConn]struct{}
}

// NewServer serves the connections peers open to ep, which must be
// listening.
func NewServer(ep *Endpoint, cfg ServerConfig) *Server {
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{ep: ep, cfg: cfg, log: cfg.Logger, served: make(map[*ServerConn]struct{})}
}

// Accept returns the next connection a peer opened; its peer passed the
// mTLS handshake and the Authorizer. Nothing has been sent on it yet:
// Serve's first message (HTTP/3 SETTINGS) tells the dialling pool the
// connection was accepted, so a connection that will not be served must
// be closed without calling Serve. Once the listener is closed, the error
// wraps net.ErrClosed.
func (s *Server) Accept(ctx context.Context) (*ServerConn, error) {
	conn, err := s.ep.Accept(ctx)
	if err != nil {
		if errors.Is(err, quic.ErrServerClosed) {
			err = meshcode.Mark(err, net.ErrClosed)
		}
		return nil, err
	}
	peer, _ := peerID(conn)
	return &ServerConn{srv: s, conn: conn, peer: peer, plain: isPlainHTTP3(conn), finished: make(chan struct{})}, nil
}

// QUICStats snapshots every connection being served; StreamsOpen counts
// its streams being served.
func (s *Server) QUICStats() []ConnStats {
	s.mu.Lock()
	conns := make([]*ServerConn, 0, len(s.served))
	for c := range s.served {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]ConnStats, 0, len(conns))
	for _, c := range conns {
		out = append(out, connStats(c.peer, c.conn, c.active.Load()))
	}
	return out
}

// ServerConn is one connection a peer sidecar opened to us.
type ServerConn struct {
	srv    *Server
	conn   *quic.Conn
	peer   identity.ID
	active atomic.Int64 // streams being served
	// plain: the peer negotiated ALPN "h3", not the mesh's: a plain
	// HTTP/3 client, whose every stream is a request (h3edge.go).
	plain bool

	// The drain handshake (docs/design.md, "Draining and GOAWAY").
	// aware: the peer said msgDrainAware. accepted counts the peer's
	// bidirectional streams taken into service (after active counted
	// each). finishedAt is 1 + the index of the stream on which the peer
	// said msgFinished, 0 before; finished is closed once it has and
	// every stream it opened before has been served.
	aware        atomic.Bool
	accepted     atomic.Int64
	finishedAt   atomic.Int64
	finished     chan struct{}
	finishedOnce sync.Once
}

// DrainAware reports whether the peer takes part in the drain handshake:
// after a GOAWAY or reconnect it says when it has finished (Finished),
// so the connection need not be watched for a quiet period.
func (c *ServerConn) DrainAware() bool { return c.aware.Load() || c.finishedAt.Load() != 0 }

// Finished is closed once the peer has said it opened its last stream on
// the connection (after our GOAWAY or reconnect, once its own requests
// and tunnels on it had ended) and every stream it opened has been
// served: the connection can be closed, nothing is lost.
func (c *ServerConn) Finished() <-chan struct{} { return c.finished }

// peerFinished records that the peer said msgFinished on the stream with
// ID id: every bidirectional stream it opened has a lower ID.
func (c *ServerConn) peerFinished(id quic.StreamID) {
	c.finishedAt.CompareAndSwap(0, int64(id)/4+1)
}

// checkFinished closes finished if the peer said msgFinished and every
// stream up to that one has been taken into service and served: active
// is counted before accepted, so when accepted covers them all, each has
// been counted in active, and active is 0 only once they have ended.
func (c *ServerConn) checkFinished() {
	if n := c.finishedAt.Load(); n != 0 && c.accepted.Load() >= n && c.active.Load() == 0 {
		c.finishedOnce.Do(func() { close(c.finished) })
	}
}

// Peer is the identity the peer proved.
func (c *ServerConn) Peer() identity.ID { return c.peer }

func (c *ServerConn) LocalAddr() net.Addr  { return c.conn.LocalAddr() }
func (c *ServerConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// Context ends when the connection closes.
func (c *ServerConn) Context() context.Context { return c.conn.Context() }

// Expires is when the certificate the peer authenticated with expires;
// zero if it presented none.
func (c *ServerConn) Expires() time.Time {
	certs := c.conn.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return time.Time{}
	}
	return certs[0].NotAfter
}

// ActiveStreams is how many of the peer's streams are being served.
func (c *ServerConn) ActiveStreams() int64 { return c.active.Load() }

// GoAway tells the peer we are draining: it opens no new streams on this
// connection and sends new work to other endpoints.
func (c *ServerConn) GoAway(ctx context.Context) error { return SendGoAway(ctx, c.conn) }

// Reconnect asks the peer to open no new streams on this connection but
// to dial a fresh one right away: only this connection is retired.
func (c *ServerConn) Reconnect(ctx context.Context) error { return SendReconnect(ctx, c.conn) }

// Close closes the connection with code; streams in flight fail.
func (c *ServerConn) Close(code meshcode.ConnCode, reason string) {
	c.conn.CloseWithError(quic.ApplicationErrorCode(code), reason)
}

// Serve takes the connection into service (its HTTP/3 SETTINGS tell the
// peer it was accepted) and serves the streams the peer opens until the
// connection ends: HTTP/3 requests with h, tunnels with tunnel, which owns
// the stream it is given. It returns when the connection has ended and
// every stream's handler has returned.
func (c *ServerConn) Serve(h http.Handler, tunnel func(str *Stream, target string)) error {
	s := c.srv
	h3 := &http3.Server{Handler: endedBodies(h), MaxHeaderBytes: s.cfg.MaxHeaderBytes, Logger: s.log}
	raw, err := h3.NewRawServerConn(c.conn)
	if err != nil {
		s.log.Warn("http3 setup failed", "peer", c.conn.RemoteAddr().String(), "error", err)
		c.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
		return fmt.Errorf("transport: serving %s: %w", c.conn.RemoteAddr(), err)
	}
	s.mu.Lock()
	s.served[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.served, c)
		s.mu.Unlock()
	}()

	conn := c.conn
	log := s.log.With("peer", conn.RemoteAddr().String(), "identity", c.peer.String())
	log.Debug("peer connected")
	var streams sync.WaitGroup
	defer streams.Wait()
	streams.Add(1)
	go func() {
		defer streams.Done()
		for {
			str, err := conn.AcceptUniStream(conn.Context())
			if err != nil {
				return
			}
			streams.Add(1)
			go func() {
				defer streams.Done()
				c.serveUniStream(raw, str)
			}()
		}
	}()
	// Streams are served by workers that wait in AcceptStream themselves
	// (see acceptors): the connection's loop wakes the goroutine that
	// serves the stream, with no accept loop handing it on (one wake-up
	// per request fewer), and the worker keeps the stack it grew in the
	// app round trip for the next stream.
	a := newAcceptors(conn.Context(), &streams, conn.AcceptStream, func(str *quic.Stream) {
		c.active.Add(1)
		c.accepted.Add(1)
		c.serveStream(raw, str, tunnel, log)
		if c.active.Add(-1) == 0 {
			c.checkFinished()
		}
	})
	<-conn.Context().Done()
	a.stop()
	log.Debug("peer connection ended", "error", context.Cause(conn.Context()))
	return nil
}

// serveUniStream hands a peer's unidirectional stream to HTTP/3, unless
// it is a mesh control stream (a mesh peer's msgDrainAware).
func (c *ServerConn) serveUniStream(raw *http3.RawServerConn, str *quic.ReceiveStream) {
	if c.plain {
		raw.HandleUnidirectionalStream(str)
		return
	}
	str.SetReadDeadline(time.Now().Add(c.srv.cfg.HeaderTimeout))
	if !isControlStream(str) {
		str.SetReadDeadline(time.Time{})
		raw.HandleUnidirectionalStream(str)
		return
	}
	msg, err := readControl(str)
	str.CancelRead(CodeNoError)
	if err == nil && msg == msgDrainAware {
		c.aware.Store(true)
	}
	// Other messages are ignored: a later version may send them.
}

// Bounds of a connection's idle stream workers: enough to keep one per
// request in flight at the loads a sidecar pair sees, few enough that a
// burst of streams does not leave hundreds of parked goroutines (and
// their stacks) behind it for long.
const (
	maxIdleWorkers = 64
	workerIdle     = 10 * time.Second
)

// acceptors are the goroutines serving one connection's streams. Each
// idle one waits in accept itself, so a new stream wakes the worker that
// will serve it. A worker that takes a job while no other is waiting
// starts one first, so a job never waits for a busy worker. After a
// job, a worker waits for the next unless maxIdle already wait. Every
// idleFor, the workers that none of the period's jobs needed (the
// fewest waiting at any moment of it, less one) are asked to end: the
// waiting ones are woken by cancelling their accept's context. All end
// when accept fails otherwise (the connection ended); wg counts them.
type acceptors[T any] struct {
	conn    context.Context
	accept  func(context.Context) (T, error)
	serve   func(T)
	wg      *sync.WaitGroup
	maxIdle int32
	idleFor time.Duration

	gen     atomic.Pointer[generation] // what waiting workers accept with
	waiting atomic.Int32               // workers in accept
	live    atomic.Int32               // workers running
	low     atomic.Int32               // fewest waiting since the last sweep
	retire  atomic.Int32               // workers still to end after a sweep

	mu      sync.Mutex
	sweeper *time.Timer
}

// generation is the context a sweep cancels to wake the waiting workers.
type generation struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newAcceptors[T any](conn context.Context, wg *sync.WaitGroup, accept func(context.Context) (T, error), serve func(T)) *acceptors[T] {
	a := &acceptors[T]{conn: conn, accept: accept, serve: serve, wg: wg, maxIdle: maxIdleWorkers, idleFor: workerIdle}
	a.init()
	return a
}

// init starts the first worker and the sweeps (once the bounds are set).
func (a *acceptors[T]) init() {
	a.newGeneration()
	a.start()
	a.mu.Lock()
	a.sweeper = time.AfterFunc(a.idleFor, a.sweep)
	a.mu.Unlock()
}

// stop ends the sweeps; the workers end with the connection.
func (a *acceptors[T]) stop() {
	a.mu.Lock()
	a.sweeper.Stop()
	a.mu.Unlock()
	a.gen.Load().cancel()
}

func (a *acceptors[T]) newGeneration() {
	ctx, cancel := context.WithCancel(a.conn)
	a.gen.Store(&generation{ctx: ctx, cancel: cancel})
}

func (a *acceptors[T]) start() {
	a.waiting.Add(1)
	a.live.Add(1)
	a.wg.Add(1)
	go a.loop()
}

func (a *acceptors[T]) loop() {
	defer a.wg.Done()
	defer a.live.Add(-1)
	for {
		g := a.gen.Load()
		job, err := a.accept(g.ctx)
		n := a.waiting.Add(-1)
		if err != nil {
			// A swept worker ends only while another still waits: the
			// last to leave accept (n == 0) stays, so there always is one.
			if a.conn.Err() != nil || g.ctx.Err() == nil || n > 0 && a.retire.Add(-1) >= 0 {
				return // the connection ended, or this worker was swept
			}
			a.waiting.Add(1) // woken by a sweep, but not one to end
			continue
		}
		for l := a.low.Load(); n < l && !a.low.CompareAndSwap(l, n); l = a.low.Load() {
		}
		if n == 0 {
			a.start()
		}
		a.serve(job)
		if a.waiting.Add(1) > a.maxIdle {
			a.waiting.Add(-1)
			return
		}
	}
}

// sweep asks the workers that waited throughout the last period, less
// one, to end, and comes again after idleFor.
func (a *acceptors[T]) sweep() {
	if a.conn.Err() != nil {
		return
	}
	if surplus := a.low.Swap(a.waiting.Load()) - 1; surplus > 0 {
		a.retire.Store(surplus)
		old := a.gen.Load()
		a.newGeneration()
		old.cancel()
	}
	a.mu.Lock()
	a.sweeper.Reset(a.idleFor)
	a.mu.Unlock()
}

// endedBodies gives a request whose stream has already ended with its
// header (a GET, typically: the client wrote HEADERS and the FIN, and they
// arrived together) http.NoBody and a ContentLength of 0, as net/http's
// server does for a request without a body. Without it the body is
// quic-go's, of unknown length, and whoever forwards the request has to
// find out that it is empty: the app-side HTTP/1.1 client probes such a
// body of a GET with a goroutine and a yield per request, as net/http's
// Transport does (docs/benchmarks.md, "The HTTP/3 hop: wake-ups").
//
// The look does not wait: with a read deadline in the past, quic-go's
// stream returns io.EOF when everything up to the FIN has been read, and
// otherwise the deadline error without consuming anything, even when
// data is there. Any answer but io.EOF leaves the body as it was.
func endedBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength <= 0 && !skipBodyLook.Load() {
			switch b, n, ended := lookAtBody(w, r.Body); {
			case ended:
				r.Body = http.NoBody
				r.ContentLength = 0
			case n > 0: // not with quic-go's streams as they are; kept anyway
				r.Body = &peekedBody{ReadCloser: r.Body, b: b}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// skipBodyLook is set only by benchmarks that measure without the look.
var skipBodyLook atomic.Bool

// pastDeadline is a read deadline that has passed.
var pastDeadline = time.Unix(1, 0)

// lookAtBody reads from body, the request body of w's HTTP/3 stream,
// with a read deadline that has passed: ended reports that it is empty
// and its stream ended; n is 1 if a byte was read (b).
func lookAtBody(w http.ResponseWriter, body io.Reader) (b byte, n int, ended bool) {
	d, ok := w.(interface{ SetReadDeadline(time.Time) error })
	if !ok || body == nil || d.SetReadDeadline(pastDeadline) != nil {
		return 0, 0, false
	}
	var p [1]byte
	n, err := body.Read(p[:])
	d.SetReadDeadline(time.Time{})
	return p[0], n, n == 0 && err == io.EOF
}

// peekedBody is a body whose first byte was read by lookAtBody.
type peekedBody struct {
	io.ReadCloser
	b    byte
	done bool
}

func (p *peekedBody) Read(b []byte) (int, error) {
	if p.done || len(b) == 0 {
		return p.ReadCloser.Read(b)
	}
	p.done = true
	b[0] = p.b
	return 1, nil
}

// serveStream tells a tunnel from an HTTP/3 request by its first bytes
// and hands it on.
func (c *ServerConn) serveStream(raw *http3.RawServerConn, str *quic.Stream, serveTunnel func(*Stream, string), log *slog.Logger) {
	str.SetReadDeadline(time.Now().Add(c.srv.cfg.HeaderTimeout))
	kind, hdr, err := readStreamStart(str, !c.plain)
	str.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		level := slog.LevelDebug // the peer gave up, or sent nothing in time
		if errors.Is(err, tunnel.ErrMalformed) {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, "bad stream start", "error", err)
		str.CancelRead(CodeBadHeader)
		str.CancelWrite(CodeBadHeader)
	case kind == streamHTTP3:
		raw.HandleRequestStream(str)
	case kind == streamControl:
		str.SetReadDeadline(time.Now().Add(c.srv.cfg.HeaderTimeout))
		msg, err := readControlFrame(str)
		str.CancelRead(CodeNoError)
		str.Close()
		if err != nil {
			log.Debug("bad control stream", "error", err)
			return
		}
		if msg == msgFinished {
			c.peerFinished(str.StreamID())
		}
		// Other messages are ignored: a later version may send them.
	default:
		serveTunnel(&Stream{str: str, hdr: hdr}, hdr.Target)
	}
}

// streamKind is what a peer's bidirectional stream carries.
type streamKind int

const (
	streamHTTP3   streamKind = iota // an HTTP/3 request
	streamTunnel                    // a tunnel: header, then the far app's bytes
	streamControl                   // a mesh control frame (msgFinished)
)

// peekReader is what readStreamStart needs of a *quic.Stream.
type peekReader interface {
	io.Reader
	Peek([]byte) (int, error)
}

// readStreamStart classifies a stream by its first varint: HTTP/3 request
// streams start with a HEADERS frame (type 0x01), tunnels with
// tunnel.FrameType, mesh control frames with ControlStreamType. For an
// HTTP/3 request or a control frame nothing is consumed; for a tunnel,
// exactly its header. Without tunnels (a plain HTTP/3 client) every
// stream that sends a first byte is an HTTP/3 request: a frame type
// HTTP/3 does not define is then HTTP/3's to ignore, never a tunnel or a
// control frame.
func readStreamStart(str peekReader, tunnels bool) (streamKind, tunnel.Header, error) {
	var first [8]byte // the longest varint
	if _, err := str.Peek(first[:1]); err != nil {
		return 0, tunnel.Header{}, fmt.Errorf("inbound: reading stream start: %w", err)
	}
	n := tunnel.PrefixLen(first[0])
	if n > 1 {
		if _, err := str.Peek(first[:n]); err != nil {
			return 0, tunnel.Header{}, fmt.Errorf("inbound: reading stream start: %w", err)
		}
	}
	if !tunnels {
		return streamHTTP3, tunnel.Header{}, nil
	}
	if !tunnel.IsTunnel(first[:n]) {
		if t, _, err := quicvarint.Parse(first[:n]); err == nil && t == ControlStreamType {
			return streamControl, tunnel.Header{}, nil
		}
		return streamHTTP3, tunnel.Header{}, nil
	}
	hdr, err := tunnel.Read(str)
	if err != nil {
		return 0, tunnel.Header{}, fmt.Errorf("inbound: bad tunnel header: %w", err)
	}
	return streamTunnel, hdr, nil
}
