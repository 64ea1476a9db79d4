// Package gateway is quicmesh's cluster gateway: a UDP relay that routes
// each new QUIC connection by the TLS server name (SNI) in the client's
// Initial and then relays the connection's datagrams both ways, without
// terminating TLS, so the caller's connection stays end to end with the
// destination sidecar (docs/design.md, "Gateway: bridging clusters").
//
// A flow is one client address: the relay keeps a flow table keyed by
// it, with one UDP socket towards the destination per flow (so replies
// find their client by the socket they arrive on), expires idle flows,
// and bounds the number of flows, of flows still waiting for their
// ClientHello, and of the bytes each of those may buffer.
package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/internal/lograte"
)

// A HelloReader reads the server name out of one client's first
// datagrams. It is stateful: a ClientHello may span several Initial
// packets and datagrams. Feed is called with each datagram of the flow,
// in arrival order, until it reports complete or an error.
type HelloReader interface {
	Feed(datagram []byte) (serverName string, complete bool, err error)
}

// Defaults of Config's limits.
const (
	// DefaultIdleTimeout is well above the mesh's QUIC idle timeout (5 s,
	// with a keep-alive every 1.25 s), so a live connection's flow never
	// expires under it, and short enough that a dead one's socket and
	// table entry are soon given back.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultPendingTimeout: a client sends its whole ClientHello in its
	// first flight, so a flow still incomplete after this is not a
	// handshake.
	DefaultPendingTimeout = 3 * time.Second
	// DefaultMaxFlows bounds relayed flows (a file descriptor and a
	// goroutine each): one per calling sidecar and destination.
	DefaultMaxFlows = 8192
	// DefaultMaxPendingFlows bounds flows waiting for their ClientHello:
	// what a flood of Initials from spoofed addresses can take, kept
	// apart from MaxFlows so that it never takes relayed flows' places.
	DefaultMaxPendingFlows = 1024
	// DefaultMaxPendingBytes bounds what one pending flow buffers: a
	// ClientHello with post-quantum key shares spans two or three
	// 1200-byte Initials, retransmissions included.
	DefaultMaxPendingBytes = 16 << 10
)

// Config configures a Relay. Conn and Router are required.
type Config struct {
	// Conn is the gateway's listening socket; the Relay closes it.
	Conn *net.UDPConn
	// Router maps server names to destinations.
	Router Router
	// NewHelloReader returns the reader for a new flow; nil is the QUIC
	// Initial parser (transport/quicinitial).
	NewHelloReader func() HelloReader
	// DialUpstream opens the socket towards a destination; nil is a
	// connected UDP socket from an ephemeral port.
	DialUpstream func(dst netip.AddrPort) (*net.UDPConn, error)

	IdleTimeout     time.Duration
	PendingTimeout  time.Duration
	MaxFlows        int
	MaxPendingFlows int
	MaxPendingBytes int

	Logger  *slog.Logger
	Metrics *Metrics
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Relay is a running gateway relay.
type Relay struct {
	cfg  Config
	conn *net.UDPConn
	log  *slog.Logger
	m    *Metrics
	logs *lograte.Limiter
	base time.Time

	mu      sync.Mutex
	flows   map[netip.AddrPort]*flow
	pending int // flows in flows still waiting for their ClientHello
	closed  bool

	wg   sync.WaitGroup
	stop chan struct{}
}

// flow is one client address's connection through the gateway.
type flow struct {
	client netip.AddrPort
	created time.Time // set before the flow is in the table; read-only
	// Used by the read loop only, until up is published.
	reader       HelloReader
	buffered     [][]byte
	bufferedSize int

	up       atomic.Pointer[net.UDPConn] // nil while pending
	dst      netip.AddrPort
	lastSeen atomic.Int64 // ns since Relay.base, either direction
}

// New starts relaying on cfg.Conn; Close stops it.
func New(cfg Config) (*Relay, error) {
	if cfg.Conn == nil || cfg.Router == nil {
		return nil, errors.New("gateway: Conn and Router are required")
	}
	if cfg.NewHelloReader == nil {
		return nil, errors.New("gateway: NewHelloReader is required")
	}
	if cfg.DialUpstream == nil {
		cfg.DialUpstream = func(dst netip.AddrPort) (*net.UDPConn, error) {
			return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		}
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = DefaultPendingTimeout
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxPendingFlows <= 0 {
		cfg.MaxPendingFlows = DefaultMaxPendingFlows
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Relay{
		cfg: cfg, conn: cfg.Conn, log: cfg.Logger, m: cfg.Metrics,
		logs:  lograte.New(0, 0, cfg.Now),
		base:  cfg.Now(),
		flows: map[netip.AddrPort]*flow{},
		stop:  make(chan struct{}),
	}
	r.wg.Add(2)
	go r.readLoop()
	go r.expireLoop()
	return r, nil
}

// Addr is the listening address.
func (r *Relay) Addr() net.Addr { return r.conn.LocalAddr() }

// Flows reports the flows held: relayed and pending.
func (r *Relay) Flows() (relayed, pending int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.flows) - r.pending, r.pending
}

// Close stops the relay: the listening socket and every flow's socket
// are closed, and Close returns once every goroutine has ended.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	flows := r.flows
	r.flows = map[netip.AddrPort]*flow{}
	r.m.flowsPending.Sub(float64(r.pending))
	r.m.flowsRelayed.Sub(float64(len(flows) - r.pending))
	r.pending = 0
	r.mu.Unlock()
	close(r.stop)
	err := r.conn.Close()
	for _, f := range flows {
		r.closeFlow(f)
	}
	r.wg.Wait()
	return err
}

func (r *Relay) since() int64 { return int64(r.cfg.Now().Sub(r.base)) }

func (r *Relay) drop(reason string) { r.m.drops[reason].Inc() }

// readLoop reads the listening socket: datagrams of relayed flows go
// straight to their destination; others may start or complete a flow.
func (r *Relay) readLoop() {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, src, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (an ICMP error queued on the socket):
			// the socket is still good.
			r.log.Debug("gateway: read error", "err", err)
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		r.mu.Lock()
		f := r.flows[src]
		r.mu.Unlock()
		if f != nil {
			if up := f.up.Load(); up != nil {
				f.lastSeen.Store(r.since())
				if _, err := up.Write(buf[:n]); err != nil {
					r.drop(DropUpstream)
					continue
				}
				r.m.bytesToDest.Add(float64(n))
				continue
			}
		}
		r.handshake(src, f, buf[:n])
	}
}

// handshake handles a datagram of a flow that is not relayed yet: it
// feeds the flow's ClientHello reader and, once the server name is
// known, routes the flow and sends on what it buffered.
func (r *Relay) handshake(src netip.AddrPort, f *flow, b []byte) {
	if f == nil {
		if !looksLikeInitial(b) {
			r.drop(DropNotInitial)
			return
		}
		r.mu.Lock()
		switch {
		case r.closed:
			r.mu.Unlock()
			return
		case len(r.flows) >= r.cfg.MaxFlows:
			r.mu.Unlock()
			r.drop(DropFlowsFull)
			r.logs.Log(r.log, slog.LevelWarn, "flows_full", "gateway: flow table full; new connection dropped", "max_flows", r.cfg.MaxFlows, "client", src.String())
			return
		case r.pending >= r.cfg.MaxPendingFlows:
			r.mu.Unlock()
			r.drop(DropPendingFull)
			r.logs.Log(r.log, slog.LevelWarn, "pending_full", "gateway: too many handshakes in progress; new connection dropped", "max_pending_flows", r.cfg.MaxPendingFlows, "client", src.String())
			return
		}
		f = &flow{client: src, reader: r.cfg.NewHelloReader(), created: r.cfg.Now()}
		f.lastSeen.Store(r.since())
		r.flows[src] = f
		r.pending++
		r.m.flowsPending.Inc()
		r.mu.Unlock()
	}
	if f.bufferedSize+len(b) > r.cfg.MaxPendingBytes {
		r.removePending(f)
		r.drop(DropPendingBytes)
		r.logs.Log(r.log, slog.LevelWarn, "pending_bytes", "gateway: ClientHello not complete within the pending byte limit; flow dropped", "client", src.String(), "max_pending_bytes", r.cfg.MaxPendingBytes)
		return
	}
	name, complete, err := f.reader.Feed(b)
	if err != nil {
		r.removePending(f)
		r.drop(DropBadInitial)
		r.logs.Log(r.log, slog.LevelDebug, "bad_initial", "gateway: unreadable Initial; flow dropped", "client", src.String(), "err", err)
		return
	}
	f.buffered = append(f.buffered, append([]byte(nil), b...))
	f.bufferedSize += len(b)
	f.lastSeen.Store(r.since())
	if !complete {
		return
	}
	dst, err := r.cfg.Router.Route(name)
	if err != nil {
		r.removePending(f)
		r.drop(DropNoRoute)
		r.logs.Log(r.log, slog.LevelWarn, "no_route|"+name, "gateway: no route for server name; connection dropped", "client", src.String(), "server_name", name, "err", err)
		return
	}
	up, err := r.cfg.DialUpstream(dst)
	if err != nil {
		r.removePending(f)
		r.drop(DropUpstream)
		r.logs.Log(r.log, slog.LevelWarn, "dial|"+dst.String(), "gateway: cannot open a socket to the destination; connection dropped", "client", src.String(), "server_name", name, "destination", dst.String(), "err", err)
		return
	}
	for _, d := range f.buffered {
		if _, err := up.Write(d); err != nil {
			r.drop(DropUpstream)
			continue
		}
		r.m.bytesToDest.Add(float64(len(d)))
	}
	f.buffered, f.bufferedSize, f.reader = nil, 0, nil
	f.dst = dst
	r.mu.Lock()
	if r.closed || r.flows[src] != f {
		// Closed, or expired while it was being routed.
		r.mu.Unlock()
		up.Close()
		return
	}
	r.pending--
	f.up.Store(up)
	r.mu.Unlock()
	r.m.flowsPending.Dec()
	r.m.flowsRelayed.Inc()
	r.m.flowsTotal.Inc()
	r.log.Debug("gateway: flow routed", "client", src.String(), "server_name", name, "destination", dst.String())
	r.wg.Add(1)
	go r.readUpstream(f, up)
}

// looksLikeInitial is the cheap test a datagram from an unknown address
// must pass before it costs a flow: a long header (first bit set) of at
// least 1200 bytes (RFC 9000 §14.1: a client pads every datagram with an
// Initial to 1200 bytes, and a server discards smaller ones) and not a
// version negotiation packet (version 0).
func looksLikeInitial(b []byte) bool {
	return len(b) >= 1200 && b[0]&0x80 != 0 && (b[1]|b[2]|b[3]|b[4]) != 0
}

// readUpstream relays the destination's datagrams to the flow's client
// until the flow's socket is closed.
func (r *Relay) readUpstream(f *flow, up *net.UDPConn) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED from an ICMP port unreachable: the destination
			// sidecar is restarting. The flow stays; QUIC decides.
			continue
		}
		f.lastSeen.Store(r.since())
		if _, err := r.conn.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			r.drop(DropUpstream)
			continue
		}
		r.m.bytesToClnt.Add(float64(n))
	}
}

// removePending forgets a flow that never got relayed.
func (r *Relay) removePending(f *flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flows[f.client] == f {
		delete(r.flows, f.client)
		r.pending--
		r.m.flowsPending.Dec()
	}
}

// expireLoop removes flows idle for IdleTimeout and pending ones older
// than PendingTimeout.
func (r *Relay) expireLoop() {
	defer r.wg.Done()
	// A quarter of the shorter timeout, at most a second: expiry is
	// never more than a second late, and costs a table scan a second.
	every := min(r.cfg.IdleTimeout, r.cfg.PendingTimeout, 4*time.Second) / 4
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.expire()
		}
	}
}

func (r *Relay) expire() {
	now := r.since()
	idle, pendingMax := int64(r.cfg.IdleTimeout), int64(r.cfg.PendingTimeout)
	var gone []*flow
	r.mu.Lock()
	for k, f := range r.flows {
		relayed := f.up.Load() != nil
		switch {
		case relayed && now-f.lastSeen.Load() > idle:
			r.m.flowsRelayed.Dec()
		case !relayed && now-int64(f.created.Sub(r.base)) > pendingMax:
			r.pending--
			r.m.flowsPending.Dec()
		default:
			continue
		}
		delete(r.flows, k)
		gone = append(gone, f)
	}
	r.mu.Unlock()
	for _, f := range gone {
		r.log.Debug("gateway: flow expired", "client", f.client.String(), "destination", f.dst.String())
		r.closeFlow(f)
	}
}

// closeFlow closes a flow's socket, which ends its reader. For flows
// taken out of the table (or of a closed relay).
func (r *Relay) closeFlow(f *flow) {
	if up := f.up.Load(); up != nil {
		up.Close()
	}
}

// String describes the relay for logs.
func (r *Relay) String() string { return fmt.Sprintf("gateway relay on %s", r.Addr()) }
