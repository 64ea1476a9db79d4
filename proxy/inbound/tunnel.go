package inbound

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
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
	peer     identity.ID
	peerName string // peer.String(), made once per tunnel
	target   string // the tunnel header's target: the routing key
	destPort uint16 // the destination port the header carried, 0 if none
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

// A tunnel goes through its own chain of layers; newTunnelChain sets
// their order:
//
//	mapResets → routeTunnel → authorizeTunnel → deliverTunnel
//
// The peer's identity is the connection's, verified by the transport.

// tunnelCall is one tunnel from a peer as the layers see it.
type tunnelCall struct {
	str    TunnelStream
	conn   PeerConn
	peer   identity.ID
	target string       // the tunnel header's target: the routing key
	log    *slog.Logger // with the peer's address and identity
	route  route        // (routeTunnel)
	// destPort is the destination port the header carried, 0 if none
	// (routeTunnel).
	destPort uint16
}

// tunnelLayer is one layer of the tunnel chain.
type tunnelLayer interface {
	serveTunnel(t *tunnelCall) error
}

// tunnelFailure is a tunnel refused or failed before its app took it:
// the peer gets a reset with code.
type tunnelFailure struct {
	code   meshcode.Code
	reason string
}

func (f *tunnelFailure) Error() string { return f.reason }

// newTunnelChain builds the tunnel layers in their order. authorizeTunnel
// goes between routeTunnel and deliverTunnel: a denied tunnel is reset
// before the app is dialled, so not a byte reaches it. A tunnel to an
// HTTP route is judged here as "tcp" and each request in it again, by
// the HTTP chain, under the policy in force when that request arrives.
func newTunnelChain(cfg Config, routes routeTable, ports destPorts, pol *policy, tunnels *tunnelHTTP) tunnelLayer {
	var t tunnelLayer = deliverTunnel{up: cfg.Upstream, connectTimeout: cfg.ConnectTimeout, headerTimeout: cfg.HeaderTimeout, metrics: cfg.Metrics, tunnels: tunnels}
	t = authorizeTunnel{next: t, policy: pol}
	t = routeTunnel{next: t, routes: routes, ports: ports, metrics: cfg.Metrics}
	return mapResets{next: t}
}

// mapResets resets a tunnel that failed before its app took it, with the
// failure's mesh code, so that the far sidecar can tell its app why.
type mapResets struct{ next tunnelLayer }

func (l mapResets) serveTunnel(t *tunnelCall) error {
	err := l.next.serveTunnel(t)
	if f, ok := err.(*tunnelFailure); ok {
		t.str.Reset(f.code)
		return nil
	}
	return err
}

// routeTunnel finds the app that serves the tunnel's target.
type routeTunnel struct {
	next    tunnelLayer
	routes  routeTable
	ports   destPorts
	metrics *telemetry.Metrics
}

func (l routeTunnel) serveTunnel(t *tunnelCall) error {
	if port, ok := destPortOf(t.str); ok {
		rt, ok := l.ports.route(port, l.routes.nameOf(t.target))
		if !ok {
			l.metrics.InboundConn(telemetry.SourceMesh, telemetry.ResultRefused)
			t.log.Warn("tunnel for a port this endpoint does not declare", "target", t.target, "port", port)
			return &tunnelFailure{code: meshcode.UnknownTarget, reason: "port " + strconv.Itoa(int(port)) + " is not a port of this endpoint"}
		}
		l.metrics.InboundConn(telemetry.SourceMesh, telemetry.ResultDelivered)
		t.route, t.destPort = rt, port
		return l.next.serveTunnel(t)
	}
	rt, ok := l.routes.lookup(t.target)
	if !ok {
		t.log.Warn("tunnel for unknown target", "target", t.target)
		return &tunnelFailure{code: meshcode.UnknownTarget, reason: "unknown target " + t.target}
	}
	t.route = rt
	return l.next.serveTunnel(t)
}

// deliverTunnel delivers a tunnel to its app: raw for a tcp:// route or
// bytes no HTTP parser would take, through tunnelHTTP otherwise.
type deliverTunnel struct {
	up             Upstream
	connectTimeout time.Duration
	headerTimeout  time.Duration
	metrics        *telemetry.Metrics
	tunnels        *tunnelHTTP
}

func (l deliverTunnel) serveTunnel(t *tunnelCall) error {
	if t.route.proto == ProtoTCP {
		return l.spliceToApp(t, t.str)
	}
	sc := newStreamConn(t.str, t.conn.LocalAddr(), t.conn.RemoteAddr(), tunnelInfo{peer: t.peer, peerName: t.peer.String(), target: t.target, destPort: t.destPort})
	detected, c, err := detect.DetectServer(sc, detect.Config{Timeout: l.headerTimeout})
	if err != nil {
		// Silence, or a first word that never ends: a slow HTTP client
		// as far as we can tell, and it has had the header timeout.
		t.log.Debug("tunnel to an HTTP route sent no request in time", "target", t.target, "error", err)
		return &tunnelFailure{code: meshcode.Reset, reason: "no request in time"}
	}
	if detected == detect.Opaque && t.route.proto == ProtoAuto {
		return l.spliceToApp(t, readThrough{r: c, Stream: t.str})
	}
	// HTTP, or bytes that are not HTTP sent to an app the route says
	// speaks HTTP: the HTTP server answers 400 to those.
	l.tunnels.serve(sc, c, detected)
	return nil
}

// spliceToApp connects to the app and splices the tunnel to it.
func (l deliverTunnel) spliceToApp(t *tunnelCall, str splice.Stream) error {
	addr := t.route.addr
	ctx, cancel := context.WithTimeout(t.str.Context(), l.connectTimeout)
	app, err := l.up.Dial(ctx, addr)
	cancel()
	if err != nil {
		t.log.Warn("connecting to app failed", "target", t.target, "app", addr, "error", err)
		return &tunnelFailure{code: meshcode.ConnectFailed, reason: "app " + addr + ": " + err.Error()}
	}
	closed := l.metrics.TCPOpen(telemetry.Inbound, t.peer.String(), t.target)
	res := splice.Run(app, str)
	closed(res.Received, res.Sent, splice.ErrClass(res.Err))
	t.log.Debug("tunnel closed", "target", t.target, "app", addr, "to_app", res.Received, "from_app", res.Sent, "error", res.Err)
	return nil
}
