package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/h2tcp"
	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// The TCP transport (transport/h2tcp) and the per-peer choice between it
// and QUIC (transport/fallback) seen through the proxy's interfaces, as
// quic.go does for QUIC alone.

// quicDialer and tcpDialer are the two pools as fallback.Dialers of
// outbound.PeerConn.
type quicDialer struct{ pool *transport.Pool }

func (d quicDialer) Get(ctx context.Context, addr string, want identity.ID) (outbound.PeerConn, error) {
	return quicPeers(d).Get(ctx, addr, want)
}

func (d quicDialer) Unavailable(addr string, want identity.ID) bool {
	return d.pool.Unavailable(addr, want)
}

type tcpDialer struct{ pool *h2tcp.Pool }

func (d tcpDialer) Get(ctx context.Context, addr string, want identity.ID) (outbound.PeerConn, error) {
	pc, err := d.pool.Get(ctx, addr, want)
	if err != nil {
		return nil, err
	}
	return tcpPeerConn{pc}, nil
}

func (d tcpDialer) Unavailable(addr string, want identity.ID) bool {
	return d.pool.Unavailable(addr, want)
}

func (d tcpDialer) Drain(addr string, want identity.ID) { d.pool.Drain(addr, want) }

type tcpPeerConn struct{ *h2tcp.PeerConn }

func (c tcpPeerConn) OpenTunnel(ctx context.Context, target string) (outbound.TunnelStream, error) {
	str, err := c.PeerConn.OpenTunnel(ctx, target)
	if err != nil {
		return nil, err
	}
	return str, nil
}

// OpenTunnelPort opens a tunnel whose header carries the original
// destination port (the transparent path), as quicPeerConn does.
func (c tcpPeerConn) OpenTunnelPort(ctx context.Context, target string, port uint16) (outbound.TunnelStream, error) {
	str, err := c.PeerConn.OpenTunnelHeader(ctx, tunnel.Header{Target: target}.WithDestPort(port))
	if err != nil {
		return nil, err
	}
	return str, nil
}

// portTunnels is a connection that can carry a destination port
// (outbound's interface of the same name).
type portTunnels interface {
	OpenTunnelPort(ctx context.Context, target string, port uint16) (outbound.TunnelStream, error)
}

// meshPeers is the fallback policy as outbound.Peers.
type meshPeers struct {
	fb  *fallback.Peers[outbound.PeerConn]
	log *slog.Logger
}

func (m meshPeers) Get(ctx context.Context, addr string, want identity.ID) (outbound.PeerConn, error) {
	c, over, err := m.fb.Get(ctx, addr, want)
	if err != nil {
		return nil, err
	}
	if over == fallback.OverQUIC && m.fb.Mode() == fallback.Auto {
		return failover{PeerConn: c, peers: m, addr: addr, want: want}, nil
	}
	return c, nil
}

func (m meshPeers) Unavailable(addr string, want identity.ID) bool {
	return m.fb.Unavailable(addr, want)
}

// failover is a QUIC connection handed out in auto mode. When it dies
// under a request because the peer stopped answering (the liveness
// watch or the idle timeout: UDP blocked mid-connection, or the peer
// frozen), it tells the policy (QUICFailed: the peer is suspect, so that
// the next Get waits for either transport no longer than the suspect
// wait) and forgets the connection. It does not send the request again
// itself: the outbound proxy's conn_dead retry sends an idempotent
// request again, to another endpoint first (a frozen peer must not hold
// it for the suspect wait while a healthy endpoint is there), or over
// the policy's choice now (TCP if only QUIC is blocked) when the peer is
// the service's only endpoint. Tunnels on the dead connection are reset
// by the idle timeout (docs/design.md, "Fallback to TCP").
type failover struct {
	outbound.PeerConn
	peers meshPeers
	addr  string
	want  identity.ID
}

// OpenTunnelPort passes the transparent path's tunnels through: the
// embedded interface alone would hide the QUIC connection's method, and
// the outbound side would refuse every tunnel that names a port.
func (f failover) OpenTunnelPort(ctx context.Context, target string, port uint16) (outbound.TunnelStream, error) {
	pt, ok := f.PeerConn.(portTunnels)
	if !ok {
		return nil, fmt.Errorf("sidecar: the connection to %s cannot carry a destination port", f.addr)
	}
	return pt.OpenTunnelPort(ctx, target, port)
}

func (f failover) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.PeerConn.RoundTrip(req)
	if err != nil && errors.Is(err, meshcode.ErrIdleTimeout) && req.Context().Err() == nil {
		f.peers.fb.QUICFailed(f.addr, f.want, smoothedRTT(f.PeerConn))
		f.PeerConn.Forget()
	}
	return resp, err
}

// smoothedRTT is a QUIC connection's smoothed RTT, 0 for another kind:
// the fallback policy sizes its wait for TCP on it.
func smoothedRTT(c outbound.PeerConn) time.Duration {
	if q, ok := c.(quicPeerConn); ok {
		return q.Conn.ConnectionStats().SmoothedRTT
	}
	return 0
}

// fallbackObserver sends the policy's decisions to the metrics.
type fallbackObserver struct {
	m interface {
		FellBack()
		Reprobed(bool)
	}
}

func (o fallbackObserver) FellBack()        { o.m.FellBack() }
func (o fallbackObserver) Reprobed(ok bool) { o.m.Reprobed(ok) }

// tcpListener is the TCP transport's listener as inbound.Listener.
type tcpListener struct{ l *h2tcp.Listener }

func (l tcpListener) Accept(ctx context.Context) (inbound.PeerConn, error) {
	c, err := l.l.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return tcpServerConn{c}, nil
}

type tcpServerConn struct{ *h2tcp.ServerConn }

func (c tcpServerConn) Serve(h http.Handler, tunnel func(inbound.TunnelStream, string)) error {
	return c.ServerConn.Serve(h, func(str *h2tcp.ServerStream, target string) { tunnel(str, target) })
}

// listeners merges the QUIC and the TCP listener into one
// inbound.Listener: Accept returns the next connection of either, and
// wraps net.ErrClosed once both are closed.
type listeners struct {
	conns  chan inbound.PeerConn
	done   chan struct{} // closed when every listener is closed
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger
}

func newListeners(log *slog.Logger, ls ...inbound.Listener) *listeners {
	m := &listeners{conns: make(chan inbound.PeerConn), done: make(chan struct{}), log: log}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, l := range ls {
		m.wg.Add(1)
		go m.accept(l)
	}
	go func() { m.wg.Wait(); close(m.done) }()
	return m
}

func (m *listeners) accept(l inbound.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept(m.ctx)
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("accepting a peer connection failed", "error", err)
			select {
			case <-time.After(10 * time.Millisecond):
			case <-m.ctx.Done():
				return
			}
			continue
		}
		select {
		case m.conns <- c:
		case <-m.ctx.Done():
			c.Close(meshcode.ConnShutdown, "shutting down")
			return
		}
	}
}

func (m *listeners) Accept(ctx context.Context) (inbound.PeerConn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// close stops accepting and waits for the accept loops.
func (m *listeners) close() {
	m.cancel()
	<-m.done
}
