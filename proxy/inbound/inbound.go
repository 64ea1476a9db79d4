// Package inbound is the mesh-facing side of a sidecar: it takes the
// connections peer sidecars open to us (from a transport, through
// Listener), serves their HTTP requests and tunnels, and delivers them
// to an Upstream: the local app.
package inbound

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

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Listener hands out the connections peer sidecars open to us; a
// transport implements it.
type Listener interface {
	// Accept returns the next connection; its peer has been
	// authenticated and authorized. Once the listener is closed the error
	// wraps net.ErrClosed.
	Accept(ctx context.Context) (PeerConn, error)
}

// PeerConn is one connection a peer sidecar opened to us.
type PeerConn interface {
	// Peer is the identity the peer proved.
	Peer() identity.ID
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// Context ends when the connection closes.
	Context() context.Context
	// Expires is when the certificate the peer authenticated with
	// expires; zero if none.
	Expires() time.Time
	// Serve takes the connection into service (to the dialling peer that
	// means "accepted": a connection we will not serve is closed without
	// it) and serves the peer's streams until the connection ends: HTTP
	// requests with h, tunnels with tunnel. It returns when the
	// connection has ended and every handler has returned.
	Serve(h http.Handler, tunnel func(str TunnelStream, target string)) error
	// ActiveStreams is how many of the peer's streams are being served.
	ActiveStreams() int64
	// GoAway tells the peer we are draining: no new streams here, new
	// work to other endpoints. Reconnect asks it to move its new work to
	// a fresh connection to us: only this one is retired.
	GoAway(ctx context.Context) error
	Reconnect(ctx context.Context) error
	// Close closes the connection with code; streams in flight fail.
	Close(code meshcode.ConnCode, reason string)
}

// TunnelStream is a tunnel a peer opened, its header already read: the
// byte stream of the far app's TCP connection.
type TunnelStream interface {
	io.Reader
	io.Writer
	// CloseWrite ends our direction (FIN).
	CloseWrite() error
	// Close ends our direction and tells the peer to stop sending, as
	// closing a TCP socket does.
	Close() error
	// Reset aborts both directions with code.
	Reset(code meshcode.Code)
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	// Context ends when the stream is finished or its connection closes.
	Context() context.Context
}

// Config wires an inbound server: what it is given (Listener, Upstream,
// Logger, Metrics, Name) and the Options that shape what it does.
type Config struct {
	// Listener supplies the peer connections to serve. Required by Serve.
	Listener Listener
	// Upstream is where routed traffic goes; nil is LocalApps built from
	// ConnectTimeout, AppStreamWindow and AppStreamsPerConn.
	Upstream Upstream
	Logger   *slog.Logger
	// Name identifies this sidecar in Quicmesh-Proxy-Error headers.
	Name string
	// Metrics records golden metrics; nil records nothing.
	Metrics *telemetry.Metrics
	Options
}

// Options tunes an inbound server; the zero value takes every default.
type Options struct {
	// Routes maps the services this sidecar serves to their apps.
	Routes Routes
	// Authorization says who may call each route; nil is authz.Default()
	// (every verified identity). Server.SetAuthorization replaces it
	// while the server runs.
	Authorization *authz.Policy
	// AppPorts are the local app's ports that a peer on the transparent
	// path may name as the destination port (ports.go); the ports of the
	// Routes' addresses are allowed too, and no other.
	AppPorts []uint16
	// AppHost is the IP address the apps are reached at by destination
	// port; default 127.0.0.1. In a pod, its own IP reaches apps that
	// listen on it only, as a client outside the mesh would.
	AppHost string
	// MaxInFlight sheds HTTP requests beyond this many concurrent ones
	// with a 503 (default 10,000; negative disables).
	MaxInFlight int
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
	cfg Config
	log *slog.Logger
	// http and tunnel are the layers that serve a peer's HTTP requests
	// and tunnels.
	http   httpLayer
	tunnel tunnelLayer
	// tunnels serves the HTTP that peers send in tunnels to HTTP routes.
	tunnels *tunnelHTTP
	policy  *policy

	inflight atomic.Int64

	mu       sync.Mutex
	conns    map[*peerConn]struct{}
	closed   bool
	draining bool
	wg       sync.WaitGroup
}

// WithDefaults returns o with every zero field that has a default set to
// it.
func (o Options) WithDefaults() Options {
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 2 * time.Second
	}
	if o.HeaderTimeout == 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 10000
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 90 * time.Second
	}
	if o.MaxHeaderBytes == 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	return o
}

// New returns an inbound server; call Serve to run it. Its routes are
// parsed here, once: a bad one is an error.
func New(cfg Config) (*Server, error) {
	routes, err := parseRoutes(cfg.Routes)
	if err != nil {
		return nil, fmt.Errorf("inbound: %w", err)
	}
	if !validAppHost(cfg.AppHost) {
		return nil, fmt.Errorf("inbound: app host %q: want an IP address", cfg.AppHost)
	}
	cfg.Options = cfg.Options.WithDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		cfg.Name = "quicmesh"
	}
	if cfg.Upstream == nil {
		cfg.Upstream = NewLocalApps(cfg.ConnectTimeout, cfg.AppStreamWindow, cfg.AppStreamsPerConn)
	}
	s := &Server{
		cfg:   cfg,
		log:   cfg.Logger,
		conns: make(map[*peerConn]struct{}),
	}
	if s.policy, err = newPolicy(cfg, routes); err != nil {
		return nil, fmt.Errorf("inbound: %w", err)
	}
	ports := newDestPorts(cfg.Options, routes)
	s.http = newHTTPChain(cfg, routes, ports, s.policy, &s.inflight)
	s.tunnels = newTunnelHTTP(cfg, chainHandler{s.http}, cfg.Logger)
	s.tunnel = newTunnelChain(cfg, routes, ports, s.policy, s.tunnels)
	return s, nil
}

// SetAuthorization puts p in force for every request and tunnel that
// reaches the policy layers from now on; those already past them go on.
// A policy naming a route this server does not serve is refused, and the
// policy in force stays: a bad reload never opens anything up.
func (s *Server) SetAuthorization(p *authz.Policy) error {
	if err := s.policy.set(p); err != nil {
		return fmt.Errorf("inbound: %w", err)
	}
	return nil
}

// Authorization is the policy in force.
func (s *Server) Authorization() *authz.Policy { return s.policy.cur.Load() }

// Serve accepts peer connections until ctx ends or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	for {
		conn, err := s.cfg.Listener.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("inbound: accepting: %w", err)
		}
		// Decided before Serve: its first message tells the dialling
		// pool the connection was accepted.
		pc, ok := s.track(conn)
		if !ok {
			conn.Close(meshcode.ConnShutdown, "shutting down")
			return nil
		}
		s.retireAtExpiry(pc)
		go s.serveConn(pc)
	}
}

// peerConn is one accepted connection from a peer sidecar.
type peerConn struct {
	conn PeerConn
	peer identity.ID
	log  *slog.Logger // with the peer's address and identity
}

func (s *Server) track(conn PeerConn) (*peerConn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return nil, false
	}
	peer := conn.Peer()
	pc := &peerConn{conn: conn, peer: peer, log: s.log.With("peer", conn.RemoteAddr().String(), "identity", peer.String())}
	s.conns[pc] = struct{}{}
	s.wg.Add(1)
	return pc, true
}

func (s *Server) serveConn(pc *peerConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, pc)
		s.mu.Unlock()
	}()
	pc.conn.Serve(peerHTTP{chain: s.http, peer: pc.peer, peerName: pc.peer.String(), plain: isPlainHTTP3(pc.conn)}, func(str TunnelStream, target string) {
		s.tunnel.serveTunnel(&tunnelCall{str: str, conn: pc.conn, peer: pc.peer, target: target, log: pc.log})
	})
}

// Close closes every peer connection at once. For a graceful drain use
// Shutdown.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for pc := range s.conns {
		pc.conn.Close(meshcode.ConnShutdown, "shutting down")
	}
	s.mu.Unlock()
	// HTTP served from tunnels ends with its streams; closing the server
	// also ends connections only it still holds.
	s.tunnels.close()
	s.wg.Wait()
	s.cfg.Upstream.Close()
	return nil
}

// DrainHandshaker is a PeerConn whose peer may take part in the drain
// handshake (the QUIC transport's; docs/design.md, "Draining and
// GOAWAY"): after GOAWAY or reconnect it says when it has opened its last
// stream and its own work on the connection has ended, so the connection
// is closed when that work is served, not after a guessed quiet period.
type DrainHandshaker interface {
	// DrainAware reports whether the peer said it takes part.
	DrainAware() bool
	// Finished is closed once the peer said it has finished and every
	// stream it opened has been served.
	Finished() <-chan struct{}
}

// drainQuiet is how long a connection must have had no streams, after
// the peer was told to go away, before it is closed, when the peer does
// not take part in the drain handshake (a plain HTTP/3 client, an older
// sidecar): long enough for a request the peer started before it read
// our GOAWAY to arrive, on a good day. It is a guess: a stream whose
// first packet comes later than that (loss, a stall of the peer) is lost.
const drainQuiet = 250 * time.Millisecond

// drainTick is how often a draining connection's streams are counted.
const drainTick = 25 * time.Millisecond

// Shutdown drains gracefully: new connections are refused, every
// connected peer is told to go away (so it sends new work elsewhere), and
// each connection is closed once its in-flight requests and tunnels have
// finished, or when ctx ends. The endpoint's listener is closed by the
// caller before calling Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	conns := make([]*peerConn, 0, len(s.conns))
	for pc := range s.conns {
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
	s.retireConn(ctx, pc, pc.conn.GoAway, meshcode.ConnShutdown)
}

// retireConn tells the peer to stop opening streams on pc (with signal:
// GOAWAY when we are going away, reconnect when only this connection is),
// waits for its streams to finish and closes it: when the peer says it
// has finished (the drain handshake), or, for a peer that does not take
// part, once the connection has been quiet for drainQuiet; at the latest
// when ctx ends.
func (s *Server) retireConn(ctx context.Context, pc *peerConn, signal func(context.Context) error, code meshcode.ConnCode) {
	var finished <-chan struct{}
	aware := func() bool { return false }
	if h, ok := pc.conn.(DrainHandshaker); ok {
		finished, aware = h.Finished(), h.DrainAware
	}
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	if err := signal(gctx); err != nil {
		s.log.Debug("sending goaway failed", "peer", pc.peer.String(), "error", err)
		// The peer will not say it finished with what it never heard of:
		// the quiet period it is.
		aware = func() bool { return false }
	}
	cancel()
	s.log.Debug("goaway sent", "peer", pc.peer.String(), "streams", pc.conn.ActiveStreams())
	if n := pc.conn.ActiveStreams(); n > 0 {
		// Said when the drain begins, not when it ends: an operator (and
		// whoever owns a long-lived tunnel) learns at once which peers
		// hold work that the end of the grace period will reset.
		if deadline, ok := ctx.Deadline(); ok {
			s.log.Info("draining: peer connection has requests or tunnels open; those still open at the deadline are reset",
				"peer", pc.peer.String(), "streams", n, "deadline", deadline.UTC().Format(time.RFC3339Nano))
		}
	}
	t := time.NewTicker(drainTick)
	defer t.Stop()
	// Quiet is counted both in wall time and in ticks this process saw:
	// a stall of the process (or the machine) longer than drainQuiet
	// right after the GOAWAY went out is not quiet, since the peer may
	// not have run in it either. Counted in wall time alone, the first
	// tick after such a stall closed the connection before the peer had
	// read the GOAWAY, and the requests and tunnels it had just started
	// on it failed (TestRollingRestartLosesNothing under load).
	//
	// A peer that takes part in the drain handshake is not watched for
	// quiet at all: a quiet connection says nothing about a stream it
	// opened whose first packet is late. Whether it does can become
	// known during the drain (its msgDrainAware arrives late), so it is
	// asked on every tick.
	quietSince, quietTicks := time.Now(), 0
	for {
		if pc.conn.ActiveStreams() > 0 {
			quietSince, quietTicks = time.Now(), 0
		} else if time.Since(quietSince) >= drainQuiet && quietTicks >= int(drainQuiet/drainTick) {
			if !aware() {
				break
			}
			if h := quietHook.Load(); h != nil {
				(*h)()
			}
		}
		select {
		case <-finished:
			s.log.Debug("peer finished: connection drained", "peer", pc.peer.String())
			pc.conn.Close(code, "drained")
			return
		case <-ctx.Done():
			s.log.Warn("grace period over, closing peer connection with work in flight", "peer", pc.peer.String(), "streams", pc.conn.ActiveStreams(), "drain_aware", aware())
			pc.conn.Close(meshcode.ConnShutdown, "grace period over")
			return
		case <-pc.conn.Context().Done():
			return
		case <-t.C:
			quietTicks++
		}
	}
	s.log.Debug("peer connection drained", "peer", pc.peer.String())
	pc.conn.Close(code, "drained")
}

// quietHook, if set (tests), is called on every tick on which a
// connection whose peer takes part in the drain handshake has been quiet
// for as long as the quiet period asks of one that does not.
var quietHook atomic.Pointer[func()]

// retireAtExpiry drains a peer's connection when the certificate it
// authenticated with expires: the peer must reconnect, and so present a
// valid certificate, to keep talking to us.
func (s *Server) retireAtExpiry(pc *peerConn) {
	expires := pc.conn.Expires()
	if expires.IsZero() {
		return
	}
	t := time.AfterFunc(time.Until(expires), func() {
		s.log.Info("retiring peer connection: peer certificate expired", "peer", pc.peer.String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.retireConn(ctx, pc, pc.conn.Reconnect, meshcode.ConnIdentity)
	})
	context.AfterFunc(pc.conn.Context(), func() { t.Stop() })
}
