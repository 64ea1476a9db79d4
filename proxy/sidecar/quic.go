package sidecar

import (
	"context"
	"net/http"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// The QUIC transport seen through the interfaces the proxy declares. Go
// does not let a method returning *transport.PeerConn satisfy one
// returning outbound.PeerConn, so these thin adapters do the conversions;
// a second transport gets its own.

// quicPeers is the pool as outbound.Peers.
type quicPeers struct{ pool *transport.Pool }

func (q quicPeers) Get(ctx context.Context, addr string, want identity.ID) (outbound.PeerConn, error) {
	pc, err := q.pool.Get(ctx, addr, want)
	if err != nil {
		return nil, err
	}
	return quicPeerConn{pc}, nil
}

func (q quicPeers) Unavailable(addr string, want identity.ID) bool {
	return q.pool.Unavailable(addr, want)
}

type quicPeerConn struct{ *transport.PeerConn }

func (c quicPeerConn) OpenTunnel(ctx context.Context, target string) (outbound.TunnelStream, error) {
	str, err := c.PeerConn.OpenTunnel(ctx, target)
	if err != nil {
		return nil, err
	}
	return str, nil
}

// OpenTunnelPort opens a tunnel whose header carries the original
// destination port (the transparent path).
func (c quicPeerConn) OpenTunnelPort(ctx context.Context, target string, port uint16) (outbound.TunnelStream, error) {
	str, err := c.PeerConn.OpenTunnelHeader(ctx, tunnel.Header{Target: target}.WithDestPort(port))
	if err != nil {
		return nil, err
	}
	return str, nil
}

// quicListener is the endpoint's server as inbound.Listener.
type quicListener struct{ srv *transport.Server }

func (l quicListener) Accept(ctx context.Context) (inbound.PeerConn, error) {
	c, err := l.srv.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return quicServerConn{c}, nil
}

type quicServerConn struct{ *transport.ServerConn }

func (c quicServerConn) Serve(h http.Handler, tunnel func(inbound.TunnelStream, string)) error {
	return c.ServerConn.Serve(h, func(str *transport.Stream, target string) { tunnel(str, target) })
}

// quicStats turns the transport's connection snapshots into the metrics
// collector's.
func quicStats(dir telemetry.Direction, stats func() []transport.ConnStats) telemetry.QUICSource {
	return func() []telemetry.QUICConn {
		conns := stats()
		out := make([]telemetry.QUICConn, 0, len(conns))
		for _, c := range conns {
			out = append(out, telemetry.QUICConn{
				Dir: dir, Peer: c.Peer.String(), RTT: c.RTT,
				PacketsLost: c.PacketsLost, PacketsSent: c.PacketsSent, StreamsOpen: c.StreamsOpen,
			})
		}
		return out
	}
}
