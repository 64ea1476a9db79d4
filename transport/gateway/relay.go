// Package gateway is quicmesh's cluster gateway: a UDP relay that routes
// each new QUIC connection by the TLS server name (SNI) in the client's
// Initial and then relays the connection's datagrams both ways, without
// terminating TLS, so the caller's connection stays end to end with the
// destination sidecar (docs/design.md, "Gateway: bridging clusters").
//
// A flow is one QUIC connection: the relay keeps a flow table keyed by
// the client's address and the connection IDs of its packets (one
// sidecar dials every peer from one UDP socket), with one UDP socket
// towards the destination per flow (so replies find their client by the
// socket they arrive on), expires idle flows, and bounds the number of
// flows, of flows still waiting for their ClientHello, and of the bytes
// each of those may buffer.
package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/transport"
)

// ErrSkipDatagram is wrapped by a HelloReader's error that concerns the
// datagram only (forged, damaged, of another connection): the relay
// drops it and the flow goes on. Any other error ends the flow.
var ErrSkipDatagram = errors.New("gateway: datagram skipped")

// A HelloReader reads the server name out of one client's first
// datagrams. It is stateful: a ClientHello may span several Initial
// packets and datagrams. Feed is called with each datagram of the flow,
// in arrival order, until it reports complete or an error.
type HelloReader interface {
	Feed(datagram []byte) (serverName string, complete bool, err error)
}

// A Refuser is a HelloReader that can also build the datagram that
// refuses its flow's connection once the ClientHello is complete: the
// QUIC Initial parser's is a CONNECTION_CLOSE (CONNECTION_REFUSED) in an
// Initial packet (quicinitial.CloseInitial). The relay sends it when it
// cannot route a flow, so the client's dial fails within a round trip
// and it tries another endpoint, instead of retransmitting its Initials
// into silence until its handshake timeout.
type Refuser interface {
	Refusal(reason string) ([]byte, error)
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
	// DefaultMaxPendingPerIP bounds the pending flows of one client IP
	// address, so that one source flooding Initials (a remote cluster
	// sending garbage) cannot take every pending place and keep the
	// other clusters' new connections out. A cluster's sidecars behind
	// one NAT address start far fewer handshakes at once: each is
	// pending for one round trip.
	DefaultMaxPendingPerIP = 64
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
	MaxPendingPerIP int
	MaxPendingBytes int
	// ProbeInterval is how often the relay probes every exported endpoint
	// for its connection ID prefix (takeover.go), when the Router lists
	// them (Destinations): 0 is a third of IdleTimeout, so a route is
	// refreshed before it expires; negative turns probing off.
	ProbeInterval time.Duration

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

	mu sync.Mutex
	// clients holds the flows by client address. One address may carry
	// several connections: a sidecar dials every peer from its one UDP
	// socket, so its connections to two endpoints behind this gateway
	// share an address and are told apart by connection ID.
	clients map[netip.AddrPort][]*flow
	flows   int // in clients
	pending int // flows still waiting for their ClientHello (or, taken over, for the destination's answer)
	// pendingByIP counts pending flows per client IP address (only
	// addresses with some).
	pendingByIP map[netip.Addr]int
	closed      bool
	// routes maps the routing prefix of a destination's connection IDs
	// to its address: learned from the flows this relay routed and from
	// probes of every exported endpoint (probe.go), so that a connection
	// another gateway of the cluster routed can be taken over when its
	// packets arrive here (takeOver).
	routes map[string]route

	wg   sync.WaitGroup
	stop chan struct{}
}

// maxConnIDs bounds the connection IDs remembered per flow: the client's
// original one and those the destination sent in long-header packets
// (its first Initial, a Retry): a handful in a normal handshake.
const maxConnIDs = 8

// route is where connection IDs with one routing prefix go.
type route struct {
	dst  netip.AddrPort
	seen int64 // ns since Relay.base: last learned or used
}

// flow is one QUIC connection through the gateway.
type flow struct {
	client  netip.AddrPort
	created time.Time // set before the flow is in the table; read-only
	// takenOver: the flow started with a short-header packet whose
	// connection ID prefix names a destination (takeOver), not with a
	// ClientHello. Set before the flow is in the table; read-only.
	takenOver bool
	// answered: the destination has sent something on a taken-over flow,
	// which then stops counting as pending.
	answered atomic.Bool
	// Used by the read loop only, until up is published.
	reader       HelloReader
	buffered     [][]byte
	bufferedSize int

	up       atomic.Pointer[net.UDPConn] // nil while pending
	dst      netip.AddrPort              // set before up is published
	lastSeen atomic.Int64                // ns since Relay.base, either direction

	// Guarded by Relay.mu. cids are connection IDs that name this flow in
	// the client's packets; key is the destination's routing prefix, the
	// first transport.ConnIDPrefixLen bytes of the first connection ID it
	// chose, which every ID it issues for the connection starts with
	// (transport's connection ID generator), so the client's packets
	// keep matching after it moves to a new connection ID.
	cids [][]byte
	key  []byte
	// pending: counted in Relay.pending (no ClientHello read yet, or
	// taken over and not answered yet). Guarded by Relay.mu.
	pending bool
}

// New starts relaying on cfg.Conn; Close stops it.
func New(cfg Config) (*Relay, error) {
	if cfg.Conn == nil || cfg.Router == nil {
		return nil, errors.New("gateway: Conn and Router are required")
	}
	if cfg.NewHelloReader == nil {
		cfg.NewHelloReader = NewInitialReader
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
	if cfg.MaxPendingPerIP <= 0 {
		cfg.MaxPendingPerIP = DefaultMaxPendingPerIP
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = cfg.IdleTimeout / 3
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
		logs:        lograte.New(0, 0, cfg.Now),
		base:        cfg.Now(),
		clients:     map[netip.AddrPort][]*flow{},
		pendingByIP: map[netip.Addr]int{},
		routes:      map[string]route{},
		stop:        make(chan struct{}),
	}
	r.wg.Add(2)
	go r.readLoop()
	go r.expireLoop()
	if d, ok := cfg.Router.(Destinations); ok && cfg.ProbeInterval >= 0 {
		r.wg.Add(1)
		go r.probeLoop(d)
	}
	return r, nil
}

// Addr is the listening address.
func (r *Relay) Addr() net.Addr { return r.conn.LocalAddr() }

// Flows reports the flows held: relayed and pending.
func (r *Relay) Flows() (relayed, pending int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flows - r.pending, r.pending
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
	clients := r.clients
	r.clients = map[netip.AddrPort][]*flow{}
	r.m.flowsPending.Sub(float64(r.pending))
	r.m.flowsRelayed.Sub(float64(r.flows - r.pending))
	r.flows, r.pending = 0, 0
	clear(r.pendingByIP)
	r.mu.Unlock()
	close(r.stop)
	err := r.conn.Close()
	for _, fs := range clients {
		for _, f := range fs {
			closeFlow(f)
		}
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
		b := buf[:n]
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		r.mu.Lock()
		f := r.lookup(src, b)
		r.mu.Unlock()
		switch {
		case f == nil:
			r.newFlow(src, b)
		case f.up.Load() == nil:
			r.handshake(f, b)
		default:
			f.lastSeen.Store(r.since())
			if _, err := f.up.Load().Write(b); err != nil {
				r.drop(DropUpstream)
				continue
			}
			r.m.bytesToDest.Add(float64(n))
		}
	}
}

// lookup finds the flow of a client's datagram by the connection ID it
// is sent to. Called with r.mu held.
func (r *Relay) lookup(src netip.AddrPort, b []byte) *flow {
	fs := r.clients[src]
	if len(fs) == 0 || len(b) == 0 {
		return nil
	}
	if b[0]&0x80 != 0 { // long header: the DCID's length is on the wire
		dcid, _, ok := longHeaderConnIDs(b)
		if !ok {
			return nil
		}
		for _, f := range fs {
			for _, c := range f.cids {
				if bytes.Equal(c, dcid) {
					return f
				}
			}
		}
		for _, f := range fs {
			if f.key != nil && bytes.HasPrefix(dcid, f.key) {
				return f
			}
		}
		return nil
	}
	// Short header: the DCID starts at byte 1 and its length is known
	// only to the destination, so match by prefix.
	id := b[1:]
	knownPrefix := false
	for _, f := range fs {
		if f.key != nil && bytes.HasPrefix(id, f.key) {
			return f
		}
	}
	for _, f := range fs {
		for _, c := range f.cids {
			if bytes.HasPrefix(id, c) {
				return f
			}
		}
	}
	if len(id) >= transport.ConnIDPrefixLen {
		_, knownPrefix = r.routes[string(id[:transport.ConnIDPrefixLen])]
	}
	// A destination whose connection IDs carry no routing prefix (not a
	// quicmesh sidecar) may have been moved to an ID we never saw: with
	// one connection from this address, it can only be that one. Unless
	// the prefix is a known sidecar's: then it is a connection of this
	// address that another gateway routed (takeOver).
	if len(fs) == 1 && fs[0].up.Load() != nil && !knownPrefix {
		return fs[0]
	}
	return nil
}

// newFlow starts a flow for a client Initial of a connection the relay
// does not know.
func (r *Relay) newFlow(src netip.AddrPort, b []byte) {
	dcid, ok := initialConnID(b)
	if !ok {
		if !r.takeOver(src, b) {
			r.drop(DropNotInitial)
		}
		return
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return
	case r.flows >= r.cfg.MaxFlows:
		r.mu.Unlock()
		r.drop(DropFlowsFull)
		r.logs.Log(r.log, slog.LevelWarn, "flows_full", "gateway: flow table full; new connection dropped", "max_flows", r.cfg.MaxFlows, "client", src.String())
		return
	case r.pending >= r.cfg.MaxPendingFlows:
		r.mu.Unlock()
		r.drop(DropPendingFull)
		r.logs.Log(r.log, slog.LevelWarn, "pending_full", "gateway: too many handshakes in progress; new connection dropped", "max_pending_flows", r.cfg.MaxPendingFlows, "client", src.String())
		return
	case r.pendingByIP[src.Addr()] >= r.cfg.MaxPendingPerIP:
		r.mu.Unlock()
		r.drop(DropPendingPerIP)
		r.logs.Log(r.log, slog.LevelWarn, "pending_per_ip|"+src.Addr().String(), "gateway: too many handshakes in progress from one address; new connection dropped", "max_pending_per_ip", r.cfg.MaxPendingPerIP, "client", src.String())
		return
	}
	f := &flow{client: src, reader: r.cfg.NewHelloReader(), created: r.cfg.Now(), cids: [][]byte{bytes.Clone(dcid)}, pending: true}
	f.lastSeen.Store(r.since())
	r.clients[src] = append(r.clients[src], f)
	r.flows++
	r.pending++
	r.pendingByIP[src.Addr()]++
	r.m.flowsPending.Inc() // under the lock: the gauges agree with Flows
	r.mu.Unlock()
	r.handshake(f, b)
}

// handshake handles a datagram of a flow that is not relayed yet: it
// feeds the flow's ClientHello reader and, once the server name is
// known, routes the flow and sends on what it buffered.
func (r *Relay) handshake(f *flow, b []byte) {
	src := f.client
	if f.bufferedSize+len(b) > r.cfg.MaxPendingBytes {
		r.remove(f)
		r.drop(DropPendingBytes)
		r.logs.Log(r.log, slog.LevelWarn, "pending_bytes", "gateway: ClientHello not complete within the pending byte limit; flow dropped", "client", src.String(), "max_pending_bytes", r.cfg.MaxPendingBytes)
		return
	}
	name, complete, err := f.reader.Feed(b)
	if err != nil {
		r.drop(DropBadInitial)
		if errors.Is(err, ErrSkipDatagram) && len(f.buffered) > 0 {
			// This datagram only (forged, damaged, another
			// connection's): the flow goes on without it.
			return
		}
		r.remove(f)
		r.logs.Log(r.log, slog.LevelDebug, "bad_initial", "gateway: unreadable Initial; flow dropped", "client", src.String(), "err", err)
		return
	}
	f.buffered = append(f.buffered, bytes.Clone(b))
	f.bufferedSize += len(b)
	f.lastSeen.Store(r.since())
	if !complete {
		return
	}
	dst, err := r.cfg.Router.Route(name)
	if err != nil {
		r.remove(f)
		r.refuse(f, "no route") // before the count: tests wait on it
		r.drop(DropNoRoute)
		r.logs.Log(r.log, slog.LevelWarn, "no_route|"+name, "gateway: no route for server name; connection dropped", "client", src.String(), "server_name", name, "err", err)
		return
	}
	up, err := r.cfg.DialUpstream(dst)
	if err != nil {
		r.remove(f)
		r.refuse(f, "destination unavailable")
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
	if r.closed || !r.holds(f) {
		// Closed, or expired while it was being routed.
		r.mu.Unlock()
		up.Close()
		return
	}
	r.notPending(f)
	f.up.Store(up)
	r.m.flowsPending.Dec()
	r.m.flowsRelayed.Inc()
	r.m.flowsTotal.Inc()
	r.mu.Unlock()
	r.log.Debug("gateway: flow routed", "client", src.String(), "server_name", name, "destination", dst.String())
	r.wg.Add(1)
	go r.readUpstream(f, up)
}

// refuse tells a flow's client that its connection is refused, if the
// flow's HelloReader can say so (a Refuser). The refusal is smaller than
// the client's Initial (1200 bytes at least), so a spoofed source gains
// no amplification from it.
func (r *Relay) refuse(f *flow, reason string) {
	rf, ok := f.reader.(Refuser)
	if !ok {
		return
	}
	b, err := rf.Refusal("quicmesh gateway: " + reason)
	if err != nil {
		r.log.Debug("gateway: cannot build a refusal", "client", f.client.String(), "err", err)
		return
	}
	// Counted before it is sent, so that whoever sees the refusal sees
	// the count too.
	r.m.refusals.Inc()
	if _, err := r.conn.WriteToUDPAddrPort(b, f.client); err != nil {
		r.log.Debug("gateway: cannot send a refusal", "client", f.client.String(), "err", err)
	}
}

// notPending counts f out of the pending flows. Called with r.mu held.
func (r *Relay) notPending(f *flow) {
	f.pending = false
	r.pending--
	ip := f.client.Addr()
	if r.pendingByIP[ip]--; r.pendingByIP[ip] <= 0 {
		delete(r.pendingByIP, ip)
	}
}

// holds reports whether f is in the table. Called with r.mu held.
func (r *Relay) holds(f *flow) bool {
	for _, g := range r.clients[f.client] {
		if g == f {
			return true
		}
	}
	return false
}

// unlink takes f out of the table, if it is there, and fixes the counts.
// Called with r.mu held.
func (r *Relay) unlink(f *flow) bool {
	fs := r.clients[f.client]
	for i, g := range fs {
		if g != f {
			continue
		}
		fs = append(fs[:i:i], fs[i+1:]...)
		if len(fs) == 0 {
			delete(r.clients, f.client)
		} else {
			r.clients[f.client] = fs
		}
		r.flows--
		if f.pending {
			r.notPending(f)
			r.m.flowsPending.Dec()
		} else {
			r.m.flowsRelayed.Dec()
		}
		return true
	}
	return false
}

// remove forgets a flow that never got relayed.
func (r *Relay) remove(f *flow) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unlink(f)
}

// learn records a connection ID the destination chose, from one of its
// long-header packets: the client's next packets are sent to it.
func (r *Relay) learn(f *flow, scid []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.key == nil && len(scid) >= transport.ConnIDPrefixLen {
		f.key = bytes.Clone(scid[:transport.ConnIDPrefixLen])
		r.learnRoute(f.key, f.dst)
	}
	for _, c := range f.cids {
		if bytes.Equal(c, scid) {
			return
		}
	}
	if len(f.cids) < maxConnIDs {
		f.cids = append(f.cids, bytes.Clone(scid))
	}
}

// initialConnID is the cheap test a datagram must pass before it costs a
// flow, and returns the client's Destination Connection ID: a long header
// (first bit set) of at least 1200 bytes (RFC 9000 §14.1: a client pads
// every datagram with an Initial to 1200 bytes, and a server discards
// smaller ones), not a version negotiation packet (version 0). Whether
// it really is an Initial is the HelloReader's to find out.
func initialConnID(b []byte) ([]byte, bool) {
	if len(b) < 1200 || b[0]&0x80 == 0 || b[1]|b[2]|b[3]|b[4] == 0 {
		return nil, false
	}
	dcid, _, ok := longHeaderConnIDs(b)
	return dcid, ok
}

// longHeaderConnIDs reads the connection IDs of a long-header packet
// (RFC 8999 §5.1: they are in the clear, each at most 255 bytes in any
// version). The slices alias b.
func longHeaderConnIDs(b []byte) (dcid, scid []byte, ok bool) {
	if len(b) < 6 || b[0]&0x80 == 0 {
		return nil, nil, false
	}
	p := 5
	dl := int(b[p])
	p++
	if len(b) < p+dl+1 {
		return nil, nil, false
	}
	dcid = b[p : p+dl]
	p += dl
	sl := int(b[p])
	p++
	if len(b) < p+sl {
		return nil, nil, false
	}
	return dcid, b[p : p+sl], true
}

// maxUpstreamDatagram is the largest datagram relayed from a destination
// to its client: above the 1452 bytes that quic-go, the mesh's QUIC
// stack, sends and reads at most, and above an Ethernet MTU. A larger
// one (which only another QUIC stack would send) is dropped.
const maxUpstreamDatagram = 2048

// readUpstream relays the destination's datagrams to the flow's client
// until the flow's socket is closed.
func (r *Relay) readUpstream(f *flow, up *net.UDPConn) {
	defer r.wg.Done()
	// On this goroutine's stack: a flow costs its goroutine, a small
	// stack and a socket, nothing on the heap (measured in
	// docs/benchmarks.md, "Gateway (issue 16)": a 64 KiB buffer here
	// grew every flow's stack to 128 KiB).
	var buf [maxUpstreamDatagram + 1]byte
	for {
		n, err := up.Read(buf[:])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED from an ICMP port unreachable: the destination
			// sidecar is restarting. The flow stays; QUIC decides.
			continue
		}
		if n > maxUpstreamDatagram {
			// Truncated: the client could not have read it whole
			// anyway (quic-go reads at most 1452 bytes a datagram).
			r.drop(DropUpstream)
			continue
		}
		f.lastSeen.Store(r.since())
		if f.takenOver && !f.answered.Load() {
			r.answered(f)
		}
		if buf[0]&0x80 != 0 {
			if _, scid, ok := longHeaderConnIDs(buf[:n]); ok && len(scid) > 0 {
				r.learn(f, scid)
			}
		}
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
	for _, fs := range r.clients {
		for _, f := range fs {
			seen := f.lastSeen.Load()
			if !f.pending && now-seen > idle ||
				f.pending && now-int64(f.created.Sub(r.base)) > pendingMax {
				gone = append(gone, f)
				continue
			}
			// A live flow keeps its destination's route.
			if rt, ok := r.routes[string(f.key)]; ok && f.key != nil && rt.dst == f.dst && rt.seen < seen {
				r.routes[string(f.key)] = route{dst: rt.dst, seen: seen}
			}
		}
	}
	for k, rt := range r.routes {
		if now-rt.seen > idle {
			delete(r.routes, k)
		}
	}
	for _, f := range gone {
		r.unlink(f)
	}
	r.mu.Unlock()
	for _, f := range gone {
		r.log.Debug("gateway: flow expired", "client", f.client.String(), "destination", f.dst.String())
		closeFlow(f)
	}
}

// closeFlow closes a flow's socket, which ends its reader. For flows
// taken out of the table (or of a closed relay).
func closeFlow(f *flow) {
	if up := f.up.Load(); up != nil {
		up.Close()
	}
}

// String describes the relay for logs.
func (r *Relay) String() string { return fmt.Sprintf("gateway relay on %s", r.Addr()) }
