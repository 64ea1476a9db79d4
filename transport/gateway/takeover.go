package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/transport"
)

// Taking over a connection another gateway routed.
//
// A cluster's gateways share no flow state. What lets one of them carry on
// a connection another one routed is the routing prefix of the
// destination's connection IDs (transport/connid.go): fixed per sidecar
// socket, and in every short-header packet the client sends. A relay
// keeps a table prefix -> destination, learned from every flow it routes
// and from probes of every exported endpoint, and when a short-header
// packet of no flow it knows carries a known prefix, it opens a flow to
// that destination and relays it (takeOver). The destination sees the
// client's packets arrive from a new address (this relay's socket) and
// validates the new path (RFC 9000 section 9; quic-go servers do), as it
// would after a NAT rebinding. So when the client's packets move from a
// dead gateway to this one (a shared address moved by VRRP, an ECMP or
// anycast route withdrawn), the connection and its streams survive.

// Destinations is implemented by a Router that can list every address it
// routes to (Exports): the relay probes them for their prefixes.
type Destinations interface {
	Destinations() []netip.AddrPort
}

// probeTimeout bounds one probe: a destination that has not answered a
// client Initial within it is tried again at the next round.
const probeTimeout = 2 * time.Second

// Routes reports the number of known connection ID prefixes.
func (r *Relay) Routes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.routes)
}

// learnRoute records that connection IDs starting with prefix go to dst.
// Called with r.mu held. The table is bounded by MaxFlows: one entry per
// destination socket is all a cluster needs.
func (r *Relay) learnRoute(prefix []byte, dst netip.AddrPort) {
	if _, ok := r.routes[string(prefix)]; !ok && len(r.routes) >= r.cfg.MaxFlows {
		return
	}
	r.routes[string(prefix)] = route{dst: dst, seen: r.since()}
}

// takeOver starts a flow for a short-header packet of a connection this
// relay does not know, if its connection ID prefix names a destination.
// It reports whether the datagram was dealt with (relayed, or dropped
// and counted). Until the destination answers, the flow counts as
// pending: a spoofed packet with a known prefix (prefixes are visible on
// the wire) costs a pending place and a socket for PendingTimeout, as a
// spoofed Initial does.
func (r *Relay) takeOver(src netip.AddrPort, b []byte) bool {
	if len(b) < 1+transport.ConnIDPrefixLen || b[0]&0x80 != 0 {
		return false
	}
	prefix := b[1 : 1+transport.ConnIDPrefixLen]
	full := func() bool {
		switch {
		case r.flows >= r.cfg.MaxFlows:
			r.drop(DropFlowsFull)
			return true
		case r.pending >= r.cfg.MaxPendingFlows:
			r.drop(DropPendingFull)
			return true
		case r.pendingByIP[src.Addr()] >= r.cfg.MaxPendingPerIP:
			r.drop(DropPendingPerIP)
			return true
		}
		return false
	}
	r.mu.Lock()
	rt, ok := r.routes[string(prefix)]
	if !ok || r.closed {
		r.mu.Unlock()
		return false
	}
	if full() {
		r.mu.Unlock()
		return true
	}
	r.mu.Unlock()

	up, err := r.cfg.DialUpstream(rt.dst)
	if err != nil {
		r.drop(DropUpstream)
		r.logs.Log(r.log, slog.LevelWarn, "dial|"+rt.dst.String(), "gateway: cannot open a socket to the destination; connection not taken over", "client", src.String(), "destination", rt.dst.String(), "err", err)
		return true
	}
	f := &flow{client: src, created: r.cfg.Now(), takenOver: true, dst: rt.dst, key: bytes.Clone(prefix), pending: true}
	f.lastSeen.Store(r.since())
	f.up.Store(up)
	r.mu.Lock()
	if r.closed || full() {
		r.mu.Unlock()
		up.Close()
		return true
	}
	r.clients[src] = append(r.clients[src], f)
	r.flows++
	r.pending++
	r.pendingByIP[src.Addr()]++
	r.m.flowsPending.Inc()
	r.mu.Unlock()
	r.log.Info("gateway: connection taken over by its connection ID", "client", src.String(), "destination", rt.dst.String())
	if _, err := up.Write(b); err != nil {
		r.drop(DropUpstream)
	} else {
		r.m.bytesToDest.Add(float64(len(b)))
	}
	r.wg.Add(1)
	go r.readUpstream(f, up)
	return true
}

// answered moves a taken-over flow from pending to relayed: the
// destination knows the connection.
func (r *Relay) answered(f *flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !f.pending || !r.holds(f) {
		return
	}
	f.answered.Store(true)
	r.notPending(f)
	r.m.flowsPending.Dec()
	r.m.flowsRelayed.Inc()
	r.m.flowsTotal.Inc()
	r.m.takeovers.Inc()
}

// probeRetry is the wait before probing again after a round in which a
// probe failed (a destination not listening yet, a route not there yet);
// it doubles up to ProbeInterval while probes keep failing.
const probeRetry = time.Second

// probeLoop probes every destination of d for its connection ID prefix
// now and every ProbeInterval (sooner after a failure), until the relay
// closes.
func (r *Relay) probeLoop(d Destinations) {
	defer r.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTimer(r.cfg.ProbeInterval)
	defer t.Stop()
	retry := probeRetry
	for {
		failed := false
		for _, dst := range d.Destinations() {
			prefix, err := r.probe(ctx, dst)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failed = true
				r.logs.Log(r.log, slog.LevelDebug, "probe|"+dst.String(), "gateway: probing a destination for its connection ID prefix failed", "destination", dst.String(), "err", err)
				continue
			}
			r.mu.Lock()
			r.learnRoute(prefix, dst)
			r.mu.Unlock()
		}
		wait := r.cfg.ProbeInterval
		if failed {
			wait = min(retry, wait)
			retry *= 2
		} else {
			retry = probeRetry
		}
		t.Reset(wait)
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

// probe learns dst's connection ID prefix: it starts a QUIC handshake
// with dst and reads the Source Connection ID of dst's first long-header
// answer (a Retry or its Initial), which starts with the prefix; then it
// gives up the handshake. The destination sees a handshake that failed
// (no client certificate), nothing more.
func (r *Relay) probe(ctx context.Context, dst netip.AddrPort) ([]byte, error) {
	up, err := r.cfg.DialUpstream(dst)
	if err != nil {
		return nil, fmt.Errorf("opening a socket: %w", err)
	}
	pc := &probeConn{c: up, scid: make(chan []byte, 1)}
	tr := &quic.Transport{Conn: pc}
	defer tr.Close() // closes up
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	dialed := make(chan error, 1)
	go func() {
		conn, err := tr.Dial(ctx, up.RemoteAddr(), &tls.Config{
			ServerName: "probe." + Suffix,
			NextProtos: []string{"quicmesh-gateway-probe"},
			// Nothing is sent or trusted: the handshake is given up at
			// the destination's first packet.
			InsecureSkipVerify: true, //nolint:gosec
		}, &quic.Config{HandshakeIdleTimeout: probeTimeout})
		if err == nil {
			_ = conn.CloseWithError(0, "probe")
			err = errors.New("probe handshake completed")
		}
		dialed <- err
	}()
	select {
	case scid := <-pc.scid:
		cancel()
		<-dialed
		return scid, nil
	case err := <-dialed:
		select {
		case scid := <-pc.scid:
			return scid, nil
		default:
		}
		return nil, err
	}
}

// probeConn is a probe's connected socket as the net.PacketConn a
// quic.Transport needs (deliberately not a *net.UDPConn, so quic-go reads
// through ReadFrom), noting the first connection ID the destination
// chose.
type probeConn struct {
	c    *net.UDPConn
	scid chan []byte
}

func (p *probeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := p.c.Read(b)
	if err == nil && n > 0 && b[0]&0x80 != 0 {
		if _, scid, ok := longHeaderConnIDs(b[:n]); ok && len(scid) >= transport.ConnIDPrefixLen {
			select {
			case p.scid <- bytes.Clone(scid[:transport.ConnIDPrefixLen]):
			default:
			}
		}
	}
	return n, p.c.RemoteAddr(), err
}

func (p *probeConn) WriteTo(b []byte, _ net.Addr) (int, error) { return p.c.Write(b) }

// SetReadBuffer and SetWriteBuffer: a probe reads and sends a handful of
// datagrams; the defaults do, and quic-go does not warn that it cannot
// raise them.
func (p *probeConn) SetReadBuffer(int) error  { return nil }
func (p *probeConn) SetWriteBuffer(int) error { return nil }

func (p *probeConn) Close() error                       { return p.c.Close() }
func (p *probeConn) LocalAddr() net.Addr                { return p.c.LocalAddr() }
func (p *probeConn) SetDeadline(t time.Time) error      { return p.c.SetDeadline(t) }
func (p *probeConn) SetReadDeadline(t time.Time) error  { return p.c.SetReadDeadline(t) }
func (p *probeConn) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }
