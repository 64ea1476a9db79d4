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
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Config configures a Pool or a Listener.
type Config struct {
	// Identity supplies our certificate and the trust roots. Required.
	Identity identity.Provider
	// Authorize decides which verified peers may connect to a Listener;
	// nil accepts any peer of our own trust domain.
	Authorize identity.Authorizer
	// Limits are the QUIC transport's: DialTimeout bounds the TCP
	// connect, HandshakeTimeout the whole dial (TCP, TLS and the peer's
	// acceptance), LivenessTimeout the liveness watch (liveness.go: as
	// over QUIC, a peer silent for it is dead), IdleTimeout and KeepAlive
	// x/net/http2's PING health check behind it (a peer silent for
	// KeepAlive is PINGed; one that does not answer by IdleTimeout is
	// dead), MaxIncomingStreams the HTTP/2
	// SETTINGS_MAX_CONCURRENT_STREAMS, MaxHandshakes the TLS handshakes
	// in progress on a Listener.
	Limits transport.Limits
	Logger *slog.Logger
	// Observer is told about handshakes (for metrics); nil tells no one.
	Observer transport.Observer
	// Dial opens the TCP connection to a peer; nil is net.Dialer. Tests
	// dial from inside a network namespace with it.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Now is the clock for back-off; nil is time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = noObserver{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	c.Limits = c.Limits.WithDefaults()
	return c
}

type noObserver struct{}

func (noObserver) HandshakeStarted() func()     { return func() {} }
func (noObserver) HandshakeRetried()            {}
func (noObserver) HandshakeFailed(bool, string) {}

// idleHealthCheck is x/net/http2's PING health check set to the QUIC
// idle timeout: a peer silent for KeepAlive is PINGed, one that has not
// answered by IdleTimeout is dead. The accepting side relies on it; the
// dialling side's liveness watch (liveness.go) is faster.
func idleHealthCheck(l transport.Limits) (readIdle, pingTimeout time.Duration) {
	return l.KeepAlive, max(l.IdleTimeout-l.KeepAlive, time.Millisecond)
}

// streamReceiveWindow is what one stream may make us buffer on either
// side of the TCP transport (SETTINGS_INITIAL_WINDOW_SIZE), fixed: x/net/http2
// has no window auto-tuning, so a stream whose reader stalls holds all
// of it. 1 MiB keeps 63 stalled streams of one peer inside the 64 MiB
// connection window with a window to spare for the others, and caps one
// stream at 1 MiB per round trip (about 0.8 Gbit/s at 10 ms; on loopback
// it is not the bottleneck, docs/benchmarks.md).
const streamReceiveWindow = 1 << 20

// receiveWindows is what one peer may make us buffer on one connection,
// the same on the accepting and the dialling side: the QUIC transport's
// per-peer budget (ConnectionReceiveWindow) and streamReceiveWindow.
func receiveWindows(l transport.Limits) (conn, stream int32) {
	return int32(min(l.ConnectionReceiveWindow, 1<<31-1)), streamReceiveWindow
}

// newTransport returns the dialling side's HTTP/2 client for limits l.
// The receive windows can only be set through net/http's HTTP2Config
// (http2.Transport has no fields for them; its defaults are 4 MiB per
// stream and 1 GiB per connection), so the client is made with
// ConfigureTransports from an http.Transport used for nothing else.
func newTransport(l transport.Limits) (*http2.Transport, error) {
	conn, stream := receiveWindows(l)
	tr, err := http2.ConfigureTransports(&http.Transport{HTTP2: &http.HTTP2Config{
		MaxReceiveBufferPerConnection: int(conn),
		MaxReceiveBufferPerStream:     int(stream),
	}})
	if err != nil {
		return nil, fmt.Errorf("h2tcp: configuring the HTTP/2 client: %w", err)
	}
	// The proxy forwards what the app sent.
	tr.DisableCompression = true
	tr.MaxHeaderListSize = 64 << 10
	tr.ReadIdleTimeout, tr.PingTimeout = idleHealthCheck(l)
	// A request beyond the peer's SETTINGS_MAX_CONCURRENT_STREAMS waits
	// for a stream, as over QUIC; without this x/net/http2 fails it as
	// "client conn not usable" while the connection still looks usable to
	// the pool, which handed it out again.
	tr.StrictMaxConcurrentStreams = true
	return tr, nil
}

type peerKey struct {
	addr string
	id   identity.ID
}

type peerState struct {
	conn    *PeerConn
	dialing chan struct{}
	transport.PeerBackoff
}

// Pool keeps one HTTP/2 connection per (peer address, expected identity),
// coalescing concurrent dials, with the QUIC pool's back-off after a
// failure (transport.Backoff).
type Pool struct {
	cfg       Config
	tr        *http2.Transport
	mu        sync.Mutex
	peers     map[peerKey]*peerState
	all       map[*PeerConn]struct{} // every open connection, pooled or retired
	closed    bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	logs      *lograte.Limiter
	onFailure atomic.Pointer[func(transport.PeerFailure)]
	// The liveness watch's counters (liveness.go); declared counts
	// connections closed because their peer stopped answering, found by
	// the watch or x/net/http2's health check.
	declared, livenessPings, livenessStarved, livenessDeferred atomic.Uint64
	// stallHook, if set (tests), adds a stall of this process to what
	// each of the watch's polls measured.
	stallHook atomic.Pointer[func() time.Duration]
}

// LivenessStats counts what the liveness watch did since the pool
// started (liveness.go).
func (p *Pool) LivenessStats() transport.LivenessStats {
	return transport.LivenessStats{Declared: p.declared.Load(), Pings: p.livenessPings.Load(), Starved: p.livenessStarved.Load(), Deferred: p.livenessDeferred.Load()}
}

// NewPool returns a pool that dials with cfg.
func NewPool(cfg Config) (*Pool, error) {
	if cfg.Identity == nil {
		return nil, errors.New("h2tcp: no identity provider: refusing to run without mTLS")
	}
	cfg = cfg.withDefaults()
	tr, err := newTransport(cfg.Limits)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg:    cfg,
		tr:     tr,
		peers:  make(map[peerKey]*peerState),
		all:    make(map[*PeerConn]struct{}),
		ctx:    ctx,
		cancel: cancel,
		logs:   lograte.New(0, 0, cfg.Now),
	}
	if cfg.Limits.LivenessTimeout > 0 {
		p.wg.Add(1)
		go p.watchLiveness()
	}
	return p, nil
}

// OnPeerFailure makes the pool call fn (never with a lock held; fn must
// not block) when a dial fails or a connection's peer stops answering.
func (p *Pool) OnPeerFailure(fn func(transport.PeerFailure)) { p.onFailure.Store(&fn) }

func (p *Pool) reportFailure(f transport.PeerFailure) {
	if fn := p.onFailure.Load(); fn != nil && *fn != nil {
		(*fn)(f)
	}
}

// Get returns the shared connection to the peer at addr that must present
// identity want, dialing it if needed. A peer that cannot be reached
// gives an error wrapping meshcode.ErrPeerUnavailable.
func (p *Pool) Get(ctx context.Context, addr string, want identity.ID) (*PeerConn, error) {
	key := peerKey{addr, want}
	// rejoined: this Get has waited for another caller's probe of a
	// restarting peer that failed, and waits for the next (as the QUIC
	// pool's Get does).
	rejoined := false
	for {
		pc, again, err := p.get(ctx, key, rejoined)
		if !again {
			return pc, err
		}
		rejoined = true
	}
}

// get is one round of Get: again when the probe it waited for was
// another caller's and found the restarting peer still down.
func (p *Pool) get(ctx context.Context, key peerKey, rejoined bool) (_ *PeerConn, again bool, _ error) {
	addr, want := key.addr, key.id
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, transport.ErrPoolClosed
	}
	st := p.peers[key]
	if st == nil {
		st = &peerState{}
		p.peers[key] = st
	}
	if st.conn != nil {
		if st.conn.Alive() {
			pc := st.conn
			p.mu.Unlock()
			return pc, false, nil
		}
		p.dropLocked(st.conn)
	}
	if now := p.cfg.Now(); st.FailsFast(now, st.dialing != nil) {
		// A peer that did not answer and has not said goodbye fails at
		// once during its back-off and while the probe that ends it is in
		// flight; one that answered or is restarting is probed.
		err, since := st.LastErr, now.Sub(st.FailedAt)
		p.mu.Unlock()
		return nil, false, fmt.Errorf("%w: %s (%s) over TCP: last failed %s ago: %w", meshcode.ErrPeerUnavailable, addr, want, since.Round(time.Millisecond), err)
	}
	joined := st.dialing != nil
	if !joined {
		st.dialing = make(chan struct{})
		p.wg.Add(1)
		go p.dial(key, st)
	}
	dialing := st.dialing
	p.mu.Unlock()

	select {
	case <-dialing:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("h2tcp: waiting for connection to %s: %w", addr, ctx.Err())
	}
	p.mu.Lock()
	pc, err, restarting := st.conn, st.LastErr, st.Restarting(p.cfg.Now())
	p.mu.Unlock()
	if pc != nil && pc.Alive() {
		return pc, false, nil
	}
	if err == nil {
		err = errors.New("connection closed right after the handshake")
	}
	if restarting && joined && !rejoined {
		// The probe was another caller's, begun perhaps before the
		// restarting peer listened again: wait for one more.
		return nil, true, nil
	}
	err = fmt.Errorf("%w: %s (%s) over TCP: %w", meshcode.ErrPeerUnavailable, addr, want, err)
	if restarting {
		err = meshcode.Mark(err, meshcode.ErrPeerRestarting)
	}
	return nil, false, err
}

func (p *Pool) drainingLocked(st *peerState) {
	st.Drain(errDraining, p.cfg.Now())
}

var errDraining = errors.New("peer is draining (GOAWAY)")

// Unavailable reports whether the peer is in back-off after a failed dial,
// a dead connection or a drain notice, for the balancer to prefer other
// endpoints, with the QUIC pool's semantics (transport.Pool.Unavailable):
// whenever Get would fail at once (a peer that did not answer, during its
// back-off and while the one dial probing it is in flight), and during
// the back-off of a peer that answered (it refused or is draining; Get
// probes it), a connection that received GOAWAY included (Get records
// the drain on finding it).
func (p *Pool) Unavailable(addr string, want identity.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[peerKey{addr, want}]
	if st == nil {
		return false
	}
	if st.conn != nil {
		if st.conn.Alive() {
			return false
		}
		if st.conn.draining() {
			return true
		}
	}
	return st.Avoided(p.cfg.Now(), st.dialing != nil)
}

func (p *Pool) dial(key peerKey, st *peerState) {
	defer p.wg.Done()
	pc, err := p.connect(key)
	var failure *transport.PeerFailure
	defer func() {
		if failure != nil {
			p.reportFailure(*failure)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() { close(st.dialing); st.dialing = nil }()
	if err == nil && p.closed {
		pc.cc.Close()
		err = transport.ErrPoolClosed
	}
	if err != nil {
		if p.closed {
			st.LastErr = transport.ErrPoolClosed
			return
		}
		reason := transport.HandshakeReason(err)
		failure = &transport.PeerFailure{Addr: key.addr, Peer: key.id, Reason: reason, Err: err}
		p.cfg.Observer.HandshakeFailed(true, reason)
		st.Fail(err, p.cfg.Now(), reason == transport.ReasonRefused)
		p.logs.Log(p.cfg.Logger, slog.LevelWarn, key.addr+"|tcp|"+reason, "peer dial failed", "transport", "tcp", "peer", key.addr, "identity", key.id.String(), "reason", reason, "failures", st.Failures, "error", err)
		return
	}
	st.Reset()
	st.conn = pc
	p.all[pc] = struct{}{}
	p.wg.Add(1)
	go p.watch(pc)
	p.cfg.Logger.Debug("peer connected", "transport", "tcp", "peer", key.addr, "identity", key.id.String())
}

// watch drops a connection from the pool when it ends: a peer that
// stopped answering is in back-off as after a failed dial; one that
// closed the connection (draining, restarting) is probed at once by the
// next Get. A connection is retired when the certificate it was
// authenticated with expires.
func (p *Pool) watch(pc *PeerConn) {
	defer p.wg.Done()
	var expiry <-chan time.Time
	if certs := pc.conn.Conn.(*tls.Conn).ConnectionState().PeerCertificates; len(certs) > 0 {
		t := time.NewTimer(time.Until(certs[0].NotAfter))
		defer t.Stop()
		expiry = t.C
	}
	select {
	case <-pc.conn.ctx.Done():
	case <-expiry:
		p.cfg.Logger.Info("retiring peer connection: peer certificate expired", "transport", "tcp", "peer", pc.addr, "identity", pc.peer.String())
		p.Drain(pc.addr, pc.peer)
		return
	}
	cause := context.Cause(pc.conn.ctx)
	p.mu.Lock()
	delete(p.all, pc)
	st := p.peers[peerKey{pc.addr, pc.peer}]
	mine := st != nil && st.conn == pc && !p.closed
	if mine {
		st.conn = nil
		if errors.Is(cause, meshcode.ErrIdleTimeout) {
			st.Fail(cause, p.cfg.Now(), false)
		} else {
			p.drainingLocked(st)
		}
	}
	p.mu.Unlock()
	if mine && errors.Is(cause, meshcode.ErrIdleTimeout) {
		p.declared.Add(1)
		p.cfg.Logger.Warn("peer stopped answering: connection closed", "transport", "tcp", "peer", pc.addr, "identity", pc.peer.String(), "liveness_timeout", p.cfg.Limits.LivenessTimeout, "error", cause)
		p.reportFailure(transport.PeerFailure{Addr: pc.addr, Peer: pc.peer, Reason: transport.ReasonUnresponsive, Err: cause})
	}
}

// connect dials TCP, runs the TLS handshake and waits for the peer to
// answer an HTTP/2 PING: with TLS 1.3 our handshake completes before the
// server has verified our certificate, and the server answers only once
// it verified it and took the connection into service (as the QUIC pool
// waits for HTTP/3 SETTINGS). The whole dial is bounded by the
// handshake timeout.
func (p *Pool) connect(key peerKey) (*PeerConn, error) {
	l := p.cfg.Limits
	ctx, cancel := context.WithTimeout(p.ctx, l.HandshakeTimeout)
	defer cancel()
	fail := func(err error, presented string) error {
		reason := transport.HandshakeReason(err)
		if reason == identity.ReasonOther {
			reason = netReason(err)
		}
		return &transport.DialError{Addr: key.addr, Want: key.id, Reason: reason, Presented: presented, Err: fmt.Errorf("over TCP: %w", err)}
	}
	// A peer behind a gateway is "server-name@gateway-address": the
	// gateway routes by the SNI (docs/design.md, "Gateway: bridging
	// clusters").
	addr, serverName := discovery.SplitDialAddr(key.addr)
	dctx, dcancel := context.WithTimeout(ctx, l.DialTimeout)
	raw, err := p.cfg.Dial(dctx, addr)
	dcancel()
	if err != nil {
		return nil, fail(err, "")
	}
	tlsConf := identity.ClientConfig(p.cfg.Identity, key.id, []string{ALPN})
	if serverName != "" {
		tlsConf.ServerName = serverName
	}
	var presented atomic.Pointer[string]
	verify := tlsConf.VerifyConnection
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			id := identity.PresentedID(cs.PeerCertificates)
			presented.Store(&id)
		}
		return err
	}
	// The kernel completes a TCP connect to a frozen peer (SIGSTOP, a
	// hung process) on its own; what the peer's process says first is
	// its TLS ServerHello. Wait for that no longer than QUIC waits for
	// any answer (DialTimeout), not the whole handshake timeout.
	raw.SetReadDeadline(time.Now().Add(l.DialTimeout))
	tc := tls.Client(&firstAnswer{Conn: raw}, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		var who string
		if id := presented.Load(); id != nil {
			who = *id
		}
		return nil, fail(err, who)
	}
	if proto := tc.ConnectionState().NegotiatedProtocol; proto != ALPN {
		tc.Close()
		return nil, fail(fmt.Errorf("peer negotiated ALPN %q, want %q", proto, ALPN), "")
	}
	wc := newWatchedConn(tc, l.IdleTimeout*3/4)
	cc, err := p.tr.NewClientConn(wc)
	if err != nil {
		wc.Close()
		return nil, fail(err, "")
	}
	if err := cc.Ping(ctx); err != nil {
		cc.Close()
		if cause := context.Cause(wc.ctx); cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}
		err = fmt.Errorf("%w: %w", errNotAccepted, err)
		return nil, fail(err, "")
	}
	return &PeerConn{cc: cc, conn: wc, pool: p, addr: key.addr, peer: key.id}, nil
}

var errNotAccepted = errors.New("the server did not accept the connection")

// firstAnswer lifts the read deadline connect sets once the peer has sent
// its first bytes.
type firstAnswer struct {
	net.Conn
	answered bool // only the connection's one reader touches it
}

func (c *firstAnswer) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.answered {
		c.answered = true
		c.Conn.SetReadDeadline(time.Time{})
	}
	return n, err
}

// netReason classifies what transport.HandshakeReason does not know: TCP
// refused (nobody listening, or a draining listener: the peer answered,
// so the pool probes it again at once), a TLS alert from the peer (it
// refused our certificate), no acceptance.
func netReason(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return transport.ReasonRefused
	case errors.As(err, &op) && op.Op == "remote error":
		return transport.ReasonPeerRefused
	case errors.Is(err, errNotAccepted):
		return transport.ReasonNotAccepted
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return transport.ReasonTimeout
	}
	return identity.ReasonOther
}

// Drain stops handing out the connection to a peer and closes it once
// its requests and tunnels have finished: new work goes elsewhere (QUIC,
// when the fallback policy moves a peer back), work in flight finishes.
func (p *Pool) Drain(addr string, want identity.ID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.peers[peerKey{addr, want}]; st != nil && st.conn != nil {
		p.retireLocked(st.conn)
	}
}

// Forget drops pc from the pool (a failure showed it broken): the next
// Get redials; pc closes once its streams have ended.
func (p *Pool) Forget(pc *PeerConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropLocked(pc)
}

// dropLocked retires pc, first recording the peer's drain if pc is its
// pooled connection and received GOAWAY or ended (so that Unavailable reports the
// peer, however the connection was found unusable: by Get, or by a
// request that failed on it).
func (p *Pool) dropLocked(pc *PeerConn) {
	if st := p.peers[peerKey{pc.addr, pc.peer}]; st != nil && st.conn == pc && (pc.draining() || pc.closedByPeer()) {
		p.drainingLocked(st)
	}
	p.retireLocked(pc)
}

// closedByPeer reports whether the connection ended other than by the
// liveness check: what watch records as a drain, recorded here too when
// a Get finds the connection ended before watch has run.
func (pc *PeerConn) closedByPeer() bool {
	return pc.conn.ctx.Err() != nil && !errors.Is(context.Cause(pc.conn.ctx), meshcode.ErrIdleTimeout)
}

// draining reports whether the connection is open but received GOAWAY.
func (pc *PeerConn) draining() bool {
	return pc.conn.ctx.Err() == nil && pc.goneAway()
}

// retireLocked stops handing out pc and closes it gracefully (GOAWAY
// semantics on our side: streams in flight finish) in the background.
func (p *Pool) retireLocked(pc *PeerConn) {
	if st := p.peers[peerKey{pc.addr, pc.peer}]; st != nil && st.conn == pc {
		st.conn = nil
	}
	if p.closed || pc.retiring {
		return
	}
	pc.retiring = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		pc.cc.Shutdown(p.ctx)
		pc.cc.Close()
	}()
}

// ConnStats is a snapshot of one connection, for metrics.
type ConnStats struct {
	Peer        identity.ID
	StreamsOpen int
}

// Stats snapshots every pooled connection.
func (p *Pool) Stats() []ConnStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []ConnStats
	for _, st := range p.peers {
		if st.conn != nil && st.conn.Alive() {
			out = append(out, ConnStats{Peer: st.conn.peer, StreamsOpen: int(st.conn.active.Load())})
		}
	}
	return out
}

// Len reports how many live connections the pool holds.
func (p *Pool) Len() int { return len(p.Stats()) }

// Close closes every connection and waits for dials in flight.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	var conns []*PeerConn
	for pc := range p.all {
		conns = append(conns, pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.cc.Close()
	}
	p.wg.Wait()
	return nil
}
