// Package inbound is the mesh-facing side of a sidecar: it accepts mTLS
// QUIC connections from peer sidecars, tells tunnel streams from HTTP/3
// request streams by their first bytes, and hands each to the local app.
package inbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// Routes maps a tunnel target (service name, or name:port) to the local
// app address that serves it.
type Routes map[string]string

// Lookup finds the app address for target: an exact match first, then the
// name without its port.
func (r Routes) Lookup(target string) (string, bool) {
	if a, ok := r[target]; ok {
		return a, true
	}
	if name, _, ok := strings.Cut(target, ":"); ok {
		a, ok := r[name]
		return a, ok
	}
	return "", false
}

// Config wires an inbound server.
type Config struct {
	Endpoint *transport.Endpoint
	Routes   Routes
	Logger   *slog.Logger
	// Name identifies this sidecar in Quicmesh-Proxy-Error headers.
	Name string
	// MaxInFlight sheds HTTP requests beyond this many concurrent ones
	// with a 503 (default 10,000; negative disables).
	MaxInFlight int
	// Metrics records golden metrics; nil records nothing.
	Metrics *telemetry.Metrics
	// ConnectTimeout bounds connecting to the local app. Default 2s.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds how long a peer may take to send the first
	// bytes of a stream, and, on a tunnel to an HTTP route, the request
	// line (detection) and each request header. Default 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes HTTP keep-alive connections carried by a tunnel
	// that have been idle this long. Default 90s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request header of HTTP carried by a
	// tunnel (431 above it). Default 64 KiB, as for HTTP/3 requests.
	MaxHeaderBytes int
	// AppStreamWindow is the HTTP/2 receive window per request to an h2c
	// app: the most response data held for one request whose client
	// stopped reading (default DefaultAppStreamWindow, 64 KiB).
	// AppStreamsPerConn requests share one app connection (default
	// DefaultAppStreamsPerConn, 100); a connection's window is their
	// product, so stalled streams never block the others on it.
	AppStreamWindow   int
	AppStreamsPerConn int
}

// Server accepts connections from peer sidecars.
type Server struct {
	cfg  Config
	log  *slog.Logger
	h3   *http3.Server
	app  *appHTTP
	dial net.Dialer
	// tunnels serves the HTTP that peers send in tunnels to HTTP routes.
	tunnels *tunnelHTTP

	inflight atomic.Int64

	mu       sync.Mutex
	conns    map[*quic.Conn]*peerConn
	closed   bool
	draining bool
	wg       sync.WaitGroup
}

// New returns an inbound server; call Serve to run it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 2 * time.Second
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 10000
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.Name == "" {
		cfg.Name = "quicmesh"
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger,
		conns: make(map[*quic.Conn]*peerConn),
		dial:  net.Dialer{Timeout: cfg.ConnectTimeout},
	}
	s.app = newAppHTTP(s)
	s.h3 = &http3.Server{
		Handler:        s.app,
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		Logger:         cfg.Logger,
		// The verified peer identity travels with every request.
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			if id, err := transport.PeerID(c); err == nil {
				ctx = context.WithValue(ctx, peerIDKey{}, id)
			}
			return ctx
		},
	}
	s.tunnels = newTunnelHTTP(cfg, s.app, cfg.Logger)
	return s
}

type peerIDKey struct{}

// PeerIDFrom returns the verified identity of the peer sidecar that sent
// an HTTP request served by this package.
func PeerIDFrom(ctx context.Context) (identity.ID, bool) {
	id, ok := ctx.Value(peerIDKey{}).(identity.ID)
	return id, ok
}

// Serve accepts peer connections until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	for {
		conn, err := s.cfg.Endpoint.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("inbound: accepting: %w", err)
		}
		// Decide before HTTP/3 sends its SETTINGS: to the dialling pool
		// they mean "accepted".
		if !s.accepting() {
			conn.CloseWithError(transport.ConnCodeShutdown, "shutting down")
			return nil
		}
		raw, err := s.h3.NewRawServerConn(conn)
		if err != nil {
			s.log.Warn("http3 setup failed", "peer", conn.RemoteAddr().String(), "error", err)
			conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeInternalError), "")
			continue
		}
		pc, ok := s.track(conn, raw)
		if !ok {
			conn.CloseWithError(transport.ConnCodeShutdown, "shutting down")
			return nil
		}
		s.retireAtExpiry(pc)
		go s.serveConn(pc)
	}
}

// peerConn is one accepted connection from a peer sidecar.
type peerConn struct {
	conn   *quic.Conn
	raw    *http3.RawServerConn
	peer   identity.ID
	active atomic.Int64 // streams being served
}

func (s *Server) accepting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed && !s.draining
}

func (s *Server) track(conn *quic.Conn, raw *http3.RawServerConn) (*peerConn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return nil, false
	}
	peer, _ := transport.PeerID(conn)
	pc := &peerConn{conn: conn, raw: raw, peer: peer}
	s.conns[conn] = pc
	s.wg.Add(1)
	return pc, true
}

func (s *Server) serveConn(pc *peerConn) {
	conn, raw := pc.conn, pc.raw
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	peer := pc.peer
	log := s.log.With("peer", conn.RemoteAddr().String(), "identity", peer.String())
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
				raw.HandleUnidirectionalStream(str)
			}()
		}
	}()
	for {
		str, err := conn.AcceptStream(conn.Context())
		if err != nil {
			log.Debug("peer connection ended", "error", err)
			return
		}
		streams.Add(1)
		pc.active.Add(1)
		go func() {
			defer streams.Done()
			defer pc.active.Add(-1)
			s.serveStream(pc, str, log)
		}()
	}
}

// serveStream tells a tunnel from an HTTP/3 request by its first bytes
// and hands it on.
func (s *Server) serveStream(pc *peerConn, str *quic.Stream, log *slog.Logger) {
	str.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	kind, hdr, err := readStreamStart(str)
	str.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		level := slog.LevelDebug // the peer gave up, or sent nothing in time
		if errors.Is(err, tunnel.ErrMalformed) {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, "bad stream start", "error", err)
		str.CancelRead(transport.CodeBadHeader)
		str.CancelWrite(transport.CodeBadHeader)
	case kind == streamHTTP3:
		pc.raw.HandleRequestStream(str)
	default:
		s.serveTunnel(pc, str, hdr, log)
	}
}

// streamKind is what a peer's bidirectional stream carries.
type streamKind int

const (
	streamHTTP3  streamKind = iota // an HTTP/3 request
	streamTunnel                   // a tunnel: header, then the far app's bytes
)

// peekReader is what readStreamStart needs of a *quic.Stream.
type peekReader interface {
	io.Reader
	Peek([]byte) (int, error)
}

// readStreamStart classifies a stream by its first varint: HTTP/3 request
// streams start with a HEADERS frame (type 0x01), tunnels with
// tunnel.FrameType. For an HTTP/3 request nothing is consumed; for a
// tunnel, exactly its header.
func readStreamStart(str peekReader) (streamKind, tunnel.Header, error) {
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
	if !tunnel.IsTunnel(first[:n]) {
		return streamHTTP3, tunnel.Header{}, nil
	}
	hdr, err := tunnel.Read(str)
	if err != nil {
		return 0, tunnel.Header{}, fmt.Errorf("inbound: bad tunnel header: %w", err)
	}
	return streamTunnel, hdr, nil
}

// Close closes every peer connection at once. For a graceful drain use
// Shutdown.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c, pc := range s.conns {
		pc.raw.CloseWithError(quic.ApplicationErrorCode(transport.ConnCodeShutdown), "shutting down")
		c.CloseWithError(transport.ConnCodeShutdown, "shutting down")
	}
	s.mu.Unlock()
	// HTTP served from tunnels ends with its streams; closing the server
	// also ends connections only it still holds.
	s.tunnels.close()
	s.wg.Wait()
	s.app.close()
	return nil
}

// drainQuiet is how long a connection must have had no streams, after
// the peer was told to go away, before it is closed: long enough for a
// request the peer started before it read our GOAWAY to arrive.
const drainQuiet = 250 * time.Millisecond

// Shutdown drains gracefully: new connections are refused, every
// connected peer is told to go away (so it sends new work elsewhere), and
// each connection is closed once its in-flight requests and tunnels have
// finished, or when ctx ends. The endpoint's listener is closed by the
// caller before calling Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	conns := make([]*peerConn, 0, len(s.conns))
	for _, pc := range s.conns {
		conns = append(conns, pc)
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	s.tunnels.drain(ctx)
	for _, pc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.drainConn(ctx, pc)
		}()
	}
	wg.Wait()
	err := ctx.Err()
	s.Close()
	return err
}

func (s *Server) drainConn(ctx context.Context, pc *peerConn) {
	s.retireConn(ctx, pc, transport.SendGoAway, transport.ConnCodeShutdown)
}

// retireConn tells the peer to stop opening streams on pc (with signal:
// GOAWAY when we are going away, reconnect when only this connection is),
// waits for its streams to finish and closes it.
func (s *Server) retireConn(ctx context.Context, pc *peerConn, signal func(context.Context, *quic.Conn) error, code quic.ApplicationErrorCode) {
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	if err := signal(gctx, pc.conn); err != nil {
		s.log.Debug("sending goaway failed", "peer", pc.peer.String(), "error", err)
	}
	cancel()
	s.log.Debug("goaway sent", "peer", pc.peer.String(), "streams", pc.active.Load())
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	quietSince := time.Now()
	for {
		if pc.active.Load() > 0 {
			quietSince = time.Now()
		} else if time.Since(quietSince) >= drainQuiet {
			break
		}
		select {
		case <-ctx.Done():
			s.log.Warn("grace period over, closing peer connection with work in flight", "peer", pc.peer.String(), "streams", pc.active.Load())
			pc.conn.CloseWithError(transport.ConnCodeShutdown, "grace period over")
			return
		case <-pc.conn.Context().Done():
			return
		case <-t.C:
		}
	}
	s.log.Debug("peer connection drained", "peer", pc.peer.String())
	pc.raw.CloseWithError(code, "drained")
}

// retireAtExpiry drains a peer's connection when the certificate it
// authenticated with expires: the peer must reconnect, and so present a
// valid certificate, to keep talking to us.
func (s *Server) retireAtExpiry(pc *peerConn) {
	certs := pc.conn.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return
	}
	t := time.AfterFunc(time.Until(certs[0].NotAfter), func() {
		s.log.Info("retiring peer connection: peer certificate expired", "peer", pc.peer.String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.retireConn(ctx, pc, transport.SendReconnect, transport.ConnCodeIdentity)
	})
	context.AfterFunc(pc.conn.Context(), func() { t.Stop() })
}

// QUICStats snapshots every accepted connection for the metrics collector.
func (s *Server) QUICStats() []telemetry.QUICConn {
	s.mu.Lock()
	conns := make([]*peerConn, 0, len(s.conns))
	for _, pc := range s.conns {
		conns = append(conns, pc)
	}
	s.mu.Unlock()
	out := make([]telemetry.QUICConn, 0, len(conns))
	for _, pc := range conns {
		out = append(out, transport.Snapshot(telemetry.Inbound, pc.peer, pc.conn, pc.active.Load()))
	}
	return out
}
