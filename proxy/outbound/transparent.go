package outbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The transparent outbound path: a listener that quicmesh init's rules
// redirect the pod's outbound TCP to. Each connection's original
// destination decides what it is:
//
//   - a service's virtual IP:port: that service, balanced over its ready
//     endpoints, the far app reached on the service's target port;
//   - a mesh endpoint's pod IP:port: that endpoint (the app chose the
//     pod), the far app reached on the port dialled;
//   - ambiguous (discovery data in conflict): refused, never guessed and
//     never sent in plain text;
//   - anything else: passed through to where it was going, as plain TCP.
//     The sidecar's own connections are not redirected (init excludes its
//     UID), so the pass-through dial leaves the pod.
//
// Then detection, as on a bind: HTTP is served request by request, the
// rest tunnelled. The destination port travels to the far sidecar in the
// tunnel header (tunnel.ExtDestPort) or the request (HeaderDestPort).

// Destinations maps original destinations to services and endpoints;
// discovery.Index implements it.
type Destinations interface {
	Lookup(dst netip.AddrPort) discovery.Target
	// Synced is closed once the first catalog is in: before, every
	// destination would look unknown and mesh traffic would leave in
	// plain text.
	Synced() <-chan struct{}
}

// Transparent configures a transparent listener.
type Transparent struct {
	// Destinations is required.
	Destinations Destinations
	// Original recovers a connection's original destination; nil is
	// origdst.Destination (SO_ORIGINAL_DST). Its error wraps
	// origdst.ErrNotRedirected for a connection that was not redirected.
	Original func(net.Conn) (netip.AddrPort, error)
	// Dial opens pass-through connections; nil is a net.Dialer bounded by
	// the proxy's connect timeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ServeTransparent accepts redirected app connections on ln until it is
// closed. Connections wait (at most the connect timeout each) until the
// destinations are synced.
func (p *Proxy) ServeTransparent(ln net.Listener, tr Transparent) error {
	if tr.Destinations == nil {
		return errors.New("outbound: transparent listener without destinations")
	}
	if tr.Original == nil {
		tr.Original = originalTCP
	}
	if tr.Dial == nil {
		d := &net.Dialer{Timeout: p.cfg.ConnectTimeout}
		tr.Dial = d.DialContext
	}
	front := p.newHTTPFront("")
	if !p.start(front) {
		return nil
	}
	return p.acceptLoop(ln, func(tc net.Conn) { p.serveTransparent(tc, front, &tr) })
}

func originalTCP(c net.Conn) (netip.AddrPort, error) {
	for {
		switch v := c.(type) {
		case *net.TCPConn:
			return origdst.Destination(v)
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return netip.AddrPort{}, fmt.Errorf("outbound: %T is not a TCP connection", c)
		}
	}
}

func (p *Proxy) serveTransparent(conn net.Conn, front *httpFront, tr *Transparent) {
	client := conn.RemoteAddr().String()
	dst, err := tr.Original(conn)
	if err != nil {
		p.cfg.Metrics.TransparentOutbound(telemetry.TransparentNotRedirected)
		p.failures.log.Warn("transparent listener: refusing a connection without an original destination", "client", client, "error", err)
		splice.Reset(conn)
		return
	}
	select {
	case <-tr.Destinations.Synced():
	default:
		timer := time.NewTimer(p.cfg.ConnectTimeout)
		select {
		case <-tr.Destinations.Synced():
			timer.Stop()
		case <-timer.C:
			p.cfg.Metrics.TransparentOutbound(telemetry.TransparentUnsynced)
			p.failures.log.Warn("transparent listener: discovery has no catalog yet; refusing", "client", client, "dst", dst.String(), "waited", p.cfg.ConnectTimeout.String())
			splice.Reset(conn)
			return
		case <-p.stop:
			timer.Stop()
			splice.Reset(conn)
			return
		}
	}
	dt := tr.Destinations.Lookup(dst)
	var t target
	switch dt.Kind {
	case discovery.ServiceTarget:
		p.cfg.Metrics.TransparentOutbound(telemetry.TransparentService)
		t = target{service: dt.Service, authority: dt.Service, port: dt.Port.Target()}
	case discovery.EndpointTarget:
		p.cfg.Metrics.TransparentOutbound(telemetry.TransparentEndpoint)
		ep := dt.Endpoint
		t = target{service: dt.Service, authority: dt.Service, port: dst.Port(), pinned: &ep}
	case discovery.Ambiguous:
		p.cfg.Metrics.TransparentOutbound(telemetry.TransparentAmbiguous)
		p.failures.log.Warn("transparent listener: refusing a connection to an address discovery gives to more than one service or endpoint", "client", client, "dst", dst.String())
		splice.Reset(conn)
		return
	default:
		p.cfg.Metrics.TransparentOutbound(telemetry.TransparentPassthrough)
		p.passthrough(conn, dst, tr)
		return
	}
	dc := &destConn{Conn: conn, t: t}
	proto, dconn, err := detect.Detect(dc, p.cfg.Detect)
	if err != nil {
		p.log.Debug("protocol detection failed", "client", client, "error", err)
		splice.Reset(conn)
		return
	}
	if proto == detect.HTTP1 || proto == detect.HTTP2 {
		front.serve(dconn, proto)
		return
	}
	p.tcp.serveTCP(dconn, t)
}

// passthrough sends conn on to dst directly, as plain TCP.
func (p *Proxy) passthrough(conn net.Conn, dst netip.AddrPort, tr *Transparent) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	out, err := tr.Dial(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		p.log.Debug("pass-through dial failed", "dst", dst.String(), "error", err)
		splice.Reset(conn)
		return
	}
	sc, ok := out.(*net.TCPConn)
	if !ok {
		out.Close()
		splice.Reset(conn)
		return
	}
	defer sc.Close()
	res := splice.Run(conn, tcpStream{sc})
	p.log.Debug("pass-through closed", "dst", dst.String(), "sent", res.Sent, "received", res.Received, "error", res.Err)
}

// tcpStream is a TCP connection as the far side of a splice.
type tcpStream struct{ *net.TCPConn }

// Reset aborts the connection (RST), as a tunnel reset would.
func (s tcpStream) Reset(meshcode.Code) { splice.Reset(s.TCPConn) }

// destConn is an app connection whose target the transparent listener
// decided; the HTTP servers find it under their wrappers
// (withConnTarget).
type destConn struct {
	net.Conn
	t target
}

func (c *destConn) NetConn() net.Conn { return c.Conn }

func (c *destConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return errors.New("outbound: connection has no write half to close")
}

type connTargetKey struct{}

// withConnTarget adds to ctx the target of a transparent connection c,
// if c is one (under any wrappers).
func withConnTarget(ctx context.Context, c net.Conn) context.Context {
	for c != nil {
		if dc, ok := c.(*destConn); ok {
			return context.WithValue(ctx, connTargetKey{}, dc.t)
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return ctx
		}
		c = u.NetConn()
	}
	return ctx
}

// transparentTarget is the target of the transparent connection a
// request arrived on.
func transparentTarget(ctx context.Context) (target, bool) {
	t, ok := ctx.Value(connTargetKey{}).(target)
	return t, ok
}
