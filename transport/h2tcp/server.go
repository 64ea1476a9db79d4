package h2tcp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// ServerConfig says how a Listener's connections serve their streams.
type ServerConfig struct {
	// HeaderTimeout bounds how long a peer may take to send a tunnel's
	// header. Default 10s.
	HeaderTimeout time.Duration
	// MaxHeaderBytes bounds an HTTP request's header. Default 64 KiB.
	MaxHeaderBytes int
}

// maxFrameSize is the largest HTTP/2 frame a Listener accepts
// (SETTINGS_MAX_FRAME_SIZE): the protocol's default and minimum, 16 KiB.
const maxFrameSize = 16 << 10

// Listener accepts mesh connections over TCP: it runs the TLS handshakes
// (mutual, TLS 1.3 only, ALPN ALPN, the peer verified and authorized by
// identity.ServerConfig exactly as on QUIC) and hands out the connections
// whose handshake succeeded.
type Listener struct {
	ln    net.Listener
	cfg   Config
	srv   ServerConfig
	tls   *tls.Config
	conns chan *ServerConn
	ctx   context.Context // ends when the listener stops
	stop  context.CancelFunc
	once  sync.Once
	wg    sync.WaitGroup
	inHS  atomic.Int64
	logs  *lograte.Limiter

	mu     sync.Mutex
	served map[*ServerConn]struct{}
}

// Listen serves mesh connections arriving on ln, which it owns.
func Listen(ln net.Listener, cfg Config, srv ServerConfig) (*Listener, error) {
	if cfg.Identity == nil {
		return nil, errors.New("h2tcp: no identity provider: refusing to run without mTLS")
	}
	cfg = cfg.withDefaults()
	if srv.HeaderTimeout == 0 {
		srv.HeaderTimeout = 10 * time.Second
	}
	if srv.MaxHeaderBytes == 0 {
		srv.MaxHeaderBytes = 64 << 10
	}
	authz := cfg.Authorize
	if authz == nil {
		id, err := identity.LocalID(cfg.Identity)
		if err != nil {
			return nil, fmt.Errorf("h2tcp: listening without a local identity: %w", err)
		}
		authz = identity.AuthorizeTrustDomain(id.TrustDomain)
	}
	l := &Listener{
		ln: ln, cfg: cfg, srv: srv,
		tls:    identity.ServerConfig(cfg.Identity, authz, []string{ALPN}),
		conns:  make(chan *ServerConn),
		logs:   lograte.New(0, 0, cfg.Now),
		served: make(map[*ServerConn]struct{}),
	}
	l.ctx, l.stop = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr is the bound TCP address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			l.cfg.Logger.Warn("tcp accept failed", "error", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		if l.inHS.Load() >= int64(l.cfg.Limits.MaxHandshakes) {
			// As on QUIC: beyond MaxHandshakes new attempts are refused
			// at once.
			if tc, ok := c.(interface{ SetLinger(int) error }); ok {
				tc.SetLinger(0) // a reset: refused, not a clean close
			}
			c.Close()
			l.cfg.Observer.HandshakeFailed(false, transport.ReasonOverloaded)
			continue
		}
		l.inHS.Add(1)
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// handshake runs one TLS handshake, bounded by the handshake timeout,
// and hands the connection to Accept.
func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	end := l.cfg.Observer.HandshakeStarted()
	done := func() { end(); l.inHS.Add(-1) }
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.Limits.HandshakeTimeout)
	defer cancel()
	tc := tls.Server(c, l.tls)
	err := tc.HandshakeContext(ctx)
	if err == nil && tc.ConnectionState().NegotiatedProtocol != ALPN {
		err = &identity.VerifyError{Reason: identity.ReasonOther, Err: fmt.Errorf("client offered no %q ALPN", ALPN)}
	}
	var peer identity.ID
	if err == nil {
		peer, err = identity.PeerID(tc.ConnectionState())
	}
	if err != nil {
		done()
		reason := transport.HandshakeReason(err)
		if reason == identity.ReasonOther {
			reason = netReason(err)
		}
		l.cfg.Observer.HandshakeFailed(false, reason)
		l.logs.Log(l.cfg.Logger, slog.LevelWarn, "tcp|"+reason, "handshake refused", "transport", "tcp", "remote", c.RemoteAddr().String(), "reason", reason, "presented_identity", identity.PresentedID(tc.ConnectionState().PeerCertificates), "error", err)
		c.Close()
		return
	}
	done()
	sc := &ServerConn{l: l, conn: newWatchedConn(tc, 0), peer: peer, expires: tc.ConnectionState().PeerCertificates[0].NotAfter}
	select {
	case l.conns <- sc:
	case <-l.ctx.Done():
		// Draining: a connection whose handshake was under way is closed
		// without being served, which its pool sees as not accepted.
		c.Close()
	}
}

// Accept returns the next connection a peer opened; its peer passed the
// mTLS handshake and the Authorizer. Nothing has been sent on it yet:
// Serve's first frames (SETTINGS, the PING answer) tell the dialling pool
// it was accepted. Once the listener is stopped the error wraps
// net.ErrClosed.
func (l *Listener) Accept(ctx context.Context) (*ServerConn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, fmt.Errorf("h2tcp: listener stopped: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// StopListening refuses new connections: the TCP listener closes, so a
// dialling peer gets a TCP reset within a round trip. Established
// connections are unaffected.
func (l *Listener) StopListening() {
	l.once.Do(func() {
		l.stop()
		l.ln.Close()
	})
}

// Close stops listening and closes every connection being served.
func (l *Listener) Close() error {
	l.StopListening()
	l.mu.Lock()
	for c := range l.served {
		c.conn.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return nil
}

// Stats snapshots every connection being served.
func (l *Listener) Stats() []ConnStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ConnStats, 0, len(l.served))
	for c := range l.served {
		out = append(out, ConnStats{Peer: c.peer, StreamsOpen: int(c.active.Load())})
	}
	return out
}

// ServerConn is one connection a peer sidecar opened to us over TCP.
type ServerConn struct {
	l       *Listener
	conn    *watchedConn
	peer    identity.ID
	expires time.Time
	active  atomic.Int64

	mu       sync.Mutex
	shutdown func(context.Context) error // sends GOAWAY; set by Serve
	goaway   bool                        // asked for before Serve set shutdown
}

// Peer is the identity the peer proved, from its verified certificate.
func (c *ServerConn) Peer() identity.ID { return c.peer }

func (c *ServerConn) LocalAddr() net.Addr  { return c.conn.LocalAddr() }
func (c *ServerConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// Context ends when the connection closes.
func (c *ServerConn) Context() context.Context { return c.conn.ctx }

// Expires is when the peer's certificate expires.
func (c *ServerConn) Expires() time.Time { return c.expires }

// ActiveStreams is how many of the peer's streams are being served.
func (c *ServerConn) ActiveStreams() int64 { return c.active.Load() }

// GoAway sends HTTP/2 GOAWAY: the peer opens no new streams here and
// sends new work elsewhere; streams in flight finish.
func (c *ServerConn) GoAway(ctx context.Context) error {
	c.mu.Lock()
	shutdown := c.shutdown
	c.goaway = shutdown == nil
	c.mu.Unlock()
	if shutdown == nil {
		return nil // Serve sends it as it starts
	}
	// x/net/http2 registers the connection for shutdown only once it
	// serves it: send again a moment later in case it had not yet (the
	// second call is a no-op for a connection that already sent it).
	time.AfterFunc(100*time.Millisecond, func() { shutdown(context.Background()) })
	return shutdown(ctx)
}

// Reconnect is GOAWAY too: HTTP/2 has one signal for "no new streams
// here", and the pool redials a peer that sent it at once (without
// back-off) when it has work for it.
func (c *ServerConn) Reconnect(ctx context.Context) error { return c.GoAway(ctx) }

// Close closes the connection; streams in flight fail. TCP carries no
// close code: the peer's pool treats any close as "probe again".
func (c *ServerConn) Close(code meshcode.ConnCode, reason string) {
	c.l.cfg.Logger.Debug("closing peer connection", "transport", "tcp", "peer", c.peer.String(), "code", fmt.Sprintf("%#x", uint64(code)), "reason", reason)
	c.conn.Close()
}

// Serve serves the peer's streams until the connection ends: HTTP/2
// requests with h, tunnels (CONNECT to TunnelAuthority) with tunnel,
// which owns the stream it is given. It returns when the connection has
// ended and every handler has returned.
func (c *ServerConn) Serve(h http.Handler, tunnelFn func(str *ServerStream, target string)) error {
	l := c.l
	lim := l.cfg.Limits
	hs := &http.Server{MaxHeaderBytes: l.srv.MaxHeaderBytes, ErrorLog: slog.NewLogLogger(l.cfg.Logger.Handler(), slog.LevelDebug)}
	connWin, streamWin := receiveWindows(lim)
	h2s := &http2.Server{
		MaxConcurrentStreams: uint32(min(lim.MaxIncomingStreams, 1<<31-1)),
		// The per-peer budget of the QUIC transport.
		MaxUploadBufferPerConnection: connWin,
		MaxUploadBufferPerStream:     streamWin,
		// The HTTP/2 default frame size, not x/net/http2's 1 MiB: the
		// peer's x/net/http2 Transport holds a request-body buffer of
		// min(our SETTINGS_MAX_FRAME_SIZE, 512 KiB) for as long as a
		// request body with no Content-Length (gRPC, every tunnel) is
		// open, so 1 MiB cost 512 KiB per stream in the outbound sidecar
		// (docs/benchmarks.md, issue 13). Larger frames buy nothing here:
		// TLS cuts them into 16 KiB records anyway.
		MaxReadFrameSize: maxFrameSize,
	}
	h2s.ReadIdleTimeout, h2s.PingTimeout = idleHealthCheck(lim)
	if err := http2.ConfigureServer(hs, h2s); err != nil {
		c.conn.Close()
		return fmt.Errorf("h2tcp: serving %s: %w", c.conn.RemoteAddr(), err)
	}
	c.mu.Lock()
	c.shutdown = hs.Shutdown
	goaway := c.goaway
	c.mu.Unlock()
	l.mu.Lock()
	l.served[c] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.served, c)
		l.mu.Unlock()
	}()
	var handlers handlerGate
	defer handlers.closeAndWait()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !handlers.enter() {
			return // the connection is gone: Serve has returned
		}
		defer handlers.leave()
		c.active.Add(1)
		defer c.active.Add(-1)
		if r.Method == http.MethodConnect && r.Host == TunnelAuthority {
			c.serveTunnel(w, r, tunnelFn)
			return
		}
		h.ServeHTTP(w, r)
	})
	if goaway {
		time.AfterFunc(100*time.Millisecond, func() { hs.Shutdown(context.Background()) })
	}
	h2s.ServeConn(c.conn, &http2.ServeConnOpts{Context: c.conn.ctx, BaseConfig: hs, Handler: handler})
	c.conn.Close()
	return nil
}

// serveTunnel answers the CONNECT at once (the peer does not wait for it
// before sending), reads the tunnel header from the request body within
// the header timeout and hands the stream over; the handler returns only
// when the stream is finished, since returning ends the HTTP/2 stream.
func (c *ServerConn) serveTunnel(w http.ResponseWriter, r *http.Request, tunnelFn func(*ServerStream, string)) {
	str := newServerStream(w, r)
	w.WriteHeader(http.StatusOK)
	if err := str.rc.Flush(); err != nil {
		return
	}
	str.rc.SetReadDeadline(time.Now().Add(c.l.srv.HeaderTimeout))
	hdr, err := tunnel.Read(r.Body)
	str.rc.SetReadDeadline(time.Time{})
	if err != nil {
		level := slog.LevelDebug
		if errors.Is(err, tunnel.ErrMalformed) {
			level = slog.LevelWarn
		}
		c.l.cfg.Logger.Log(r.Context(), level, "bad stream start", "transport", "tcp", "peer", c.peer.String(), "error", err)
		str.Reset(meshcode.BadHeader)
	} else {
		str.hdr = hdr
		tunnelFn(str, hdr.Target)
	}
	str.wait()
}

// handlerGate counts a connection's running handlers so that Serve
// returns only after every one has. x/net/http2 starts each handler on
// its own goroutine and ServeConn does not wait for them, so a handler
// can begin after ServeConn returned; a bare sync.WaitGroup.Add there
// raced with Wait (the race detector caught it under load, and such a
// handler ran after Serve had returned). Once closed the gate admits no
// handler: its connection has ended.
type handlerGate struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// enter admits a handler (leave when it returns) unless the gate is
// closed.
func (g *handlerGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *handlerGate) leave() { g.wg.Done() }

// closeAndWait admits no more handlers and waits for those admitted.
func (g *handlerGate) closeAndWait() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
