package inbound

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Tunnels and HTTP routes.
//
// A tunnel's bytes come from the far app through its sidecar, which
// decided they were not HTTP (detection timed out, CONNECT, an upgrade).
// That decision is not ours to trust: the far app controls the bytes and
// the far sidecar may be compromised. So a tunnel reaches its app raw only
// when the route says the app is not HTTP (tcp://), or, on a route that
// does not say (a bare address), when detect.DetectServer finds that no
// HTTP/1 parser could read the bytes as a request. Everything else is
// served by tunnelHTTP: an HTTP/1.1 server (with the raw-byte inspector and
// Guard, header timeout and size limit) or an HTTP/2 server, whose handler
// is the one that serves HTTP/3 requests, so the app sees exactly what an
// HTTP/3 request would have given it: Quicmesh-* stripped, the verified
// identity added, hop-by-hop fields dropped.

// tunnelInfo is what the inbound side knows about a tunnel for itself.
type tunnelInfo struct {
	peer   identity.ID
	target string // the tunnel header's target: the routing key
}

// tunnelStream is what streamConn needs of a TunnelStream.
type tunnelStream interface {
	splice.Stream
	Close() error
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// streamConn presents a tunnel stream as a net.Conn to net/http and
// x/net/http2.
type streamConn struct {
	str           tunnelStream
	local, remote net.Addr
	info          tunnelInfo

	once sync.Once
	done chan struct{} // closed by Close: the server is finished with it
}

func newStreamConn(str tunnelStream, local, remote net.Addr, info tunnelInfo) *streamConn {
	return &streamConn{str: str, local: local, remote: remote, info: info, done: make(chan struct{})}
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.str.Read(p) }
func (c *streamConn) Write(p []byte) (int, error) { return c.str.Write(p) }

// CloseWrite sends FIN; net/http uses it for a graceful close.
func (c *streamConn) CloseWrite() error { return c.str.CloseWrite() }

// Close ends our side after what was written and stops the peer from
// sending what nobody will read, as closing a TCP socket does; it is
// idempotent.
func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.str.Close()
		close(c.done)
	})
	return nil
}

// abort resets both directions.
func (c *streamConn) abort(code meshcode.Code) {
	c.str.Reset(code)
	c.Close()
}

func (c *streamConn) LocalAddr() net.Addr                { return c.local }
func (c *streamConn) RemoteAddr() net.Addr               { return c.remote }
func (c *streamConn) SetDeadline(t time.Time) error      { return c.str.SetDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.str.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }

// streamConnOf finds the streamConn under the wrappers (detection replay,
// framing inspector) that net/http hands to ConnContext and Hijack.
func streamConnOf(c net.Conn) *streamConn {
	for c != nil {
		if sc, ok := c.(*streamConn); ok {
			return sc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

type tunnelKey struct{}

// withTunnel marks ctx as serving requests parsed from sc's bytes.
func withTunnel(ctx context.Context, sc *streamConn) context.Context {
	return context.WithValue(ctx, tunnelKey{}, sc)
}

// tunnelFrom returns the tunnel a request was parsed from, or nil for an
// HTTP/3 request.
func tunnelFrom(ctx context.Context) *streamConn {
	sc, _ := ctx.Value(tunnelKey{}).(*streamConn)
	return sc
}

// readThrough is a tunnel stream whose reads go through a reader that may
// hold bytes already taken off the stream (detection, an HTTP server's
// buffer); writes, FIN and resets go to the stream.
type readThrough struct {
	r io.Reader
	splice.Stream
}

func (s readThrough) Read(p []byte) (int, error) { return s.r.Read(p) }

// tunnelHTTP serves HTTP read from tunnel streams.
type tunnelHTTP struct {
	h1     *http.Server
	h2     *http2.Server
	conns  *httpx.ConnListener
	served chan struct{} // h1.Serve returned
	// h2drain only carries h2's graceful-shutdown hook: its Shutdown sends
	// GOAWAY on every HTTP/2 connection. h1.Shutdown cannot be used for
	// a drain: it waits for Serve to return, i.e. for the listener to
	// close, and a drain must still serve tunnels a peer opened before
	// it read our GOAWAY.
	h2drain *http.Server
	// onResetFlood runs when a connection is closed for resetting
	// streams at an abusive rate.
	onResetFlood func()
}

func newTunnelHTTP(cfg Config, handler http.Handler, log *slog.Logger) *tunnelHTTP {
	t := &tunnelHTTP{conns: httpx.NewConnListener(), served: make(chan struct{}), h2drain: &http.Server{}}
	t.onResetFlood = func() {
		cfg.Metrics.LoadShed(telemetry.Inbound, "h2_reset_flood")
		log.Debug("closing HTTP/2 connection in a tunnel: stream resets at an abusive rate")
	}
	guarded := httpx.Guard(handler)
	t.h1 = &http.Server{
		Handler: guarded,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			ctx = httpx.ConnContext(ctx, c)
			if sc := streamConnOf(c); sc != nil {
				ctx = withTunnel(ctx, sc)
			}
			return ctx
		},
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	t.h2 = &http2.Server{
		IdleTimeout:          cfg.IdleTimeout,
		MaxReadFrameSize:     1 << 20,
		MaxConcurrentStreams: 1000,
	}
	if err := http2.ConfigureServer(t.h2drain, t.h2); err != nil {
		log.Error("configuring HTTP/2 for tunnels", "error", err)
	}
	go func() {
		defer close(t.served)
		t.h1.Serve(t.conns)
	}()
	return t
}

// serve serves HTTP from sc until the server is done with it.
func (t *tunnelHTTP) serve(sc *streamConn, c net.Conn, proto detect.Protocol) {
	switch proto {
	case detect.HTTP2:
		// A peer sidecar is not trusted to be well-behaved: the same
		// reset-flood guard as on the app-facing listeners.
		g := h2guard.Wrap(c, h2guard.Limit{}, t.onResetFlood)
		t.h2.ServeConn(g, &http2.ServeConnOpts{
			Context:    h2guard.NewContext(withTunnel(context.Background(), sc), g),
			Handler:    t.h1.Handler,
			BaseConfig: t.h1,
		})
		// Through the guard: after an abusive burst it closes by itself
		// once the peer has had time to read its GOAWAY (closing the
		// stream at once would stop the peer's sending and so reset the
		// far client's socket, GOAWAY unread).
		g.Close()
	default:
		if t.conns.Push(httpx.InspectConn(c)) {
			<-sc.done
		}
	}
}

// drain makes HTTP/1 connections close after their current request (idle
// ones at once) and sends GOAWAY on HTTP/2 ones, so that their streams end
// and the peer connections can drain.
func (t *tunnelHTTP) drain(ctx context.Context) {
	t.h1.SetKeepAlivesEnabled(false)
	t.h2drain.Shutdown(ctx)
}

func (t *tunnelHTTP) close() {
	t.conns.Close()
	t.h1.Close()
	<-t.served
}

// serveTunnel delivers a tunnel to the app its target routes to: raw for
// a tcp:// route or bytes no HTTP parser would take, through tunnelHTTP
// otherwise.
func (s *Server) serveTunnel(pc *peerConn, str TunnelStream, target string) {
	log := pc.log
	value, ok := s.cfg.Routes.Lookup(target)
	proto, addr, err := ParseAppAddr(value)
	if !ok || err != nil {
		log.Warn("tunnel for unknown target", "target", target)
		str.Reset(meshcode.UnknownTarget)
		return
	}
	if proto == ProtoTCP {
		s.spliceToApp(str.Context(), str, target, addr, pc.peer, log)
		return
	}
	sc := newStreamConn(str, pc.conn.LocalAddr(), pc.conn.RemoteAddr(), tunnelInfo{peer: pc.peer, target: target})
	detected, c, err := detect.DetectServer(sc, detect.Config{Timeout: s.cfg.HeaderTimeout})
	if err != nil {
		// Silence, or a first word that never ends: a slow HTTP client
		// as far as we can tell, and it has had the header timeout.
		log.Debug("tunnel to an HTTP route sent no request in time", "target", target, "error", err)
		sc.abort(meshcode.Reset)
		return
	}
	if detected == detect.Opaque && proto == ProtoAuto {
		s.spliceToApp(str.Context(), readThrough{r: c, Stream: str}, target, addr, pc.peer, log)
		return
	}
	// HTTP, or bytes that are not HTTP sent to an app the route says
	// speaks HTTP: the HTTP server answers 400 to those.
	s.tunnels.serve(sc, c, detected)
}

// spliceToApp connects to the app and splices the tunnel to it.
func (s *Server) spliceToApp(ctx context.Context, str splice.Stream, target, addr string, peer identity.ID, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	app, err := s.cfg.Upstream.Dial(ctx, addr)
	cancel()
	if err != nil {
		log.Warn("connecting to app failed", "target", target, "app", addr, "error", err)
		str.Reset(meshcode.ConnectFailed)
		return
	}
	closed := s.cfg.Metrics.TCPOpen(telemetry.Inbound, peer.String(), target)
	res := splice.Run(app, str)
	closed(res.Received, res.Sent, splice.ErrClass(res.Err))
	log.Debug("tunnel closed", "target", target, "app", addr, "to_app", res.Received, "from_app", res.Sent, "error", res.Err)
}
