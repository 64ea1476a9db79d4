package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// ErrPeerUnavailable is wrapped when a peer cannot be reached: the dial
// failed just now, or failed recently and is in back-off.
var ErrPeerUnavailable = meshcode.ErrPeerUnavailable

// ErrStreamNotOpened is wrapped when a tunnel stream could not be opened
// because its connection had closed: nothing reached the peer, so the
// open may be retried on a fresh connection (such errors are also marked
// meshcode.ErrNotProcessed and meshcode.ErrConnDead).
var ErrStreamNotOpened = errors.New("transport: stream not opened: connection closed")

// ErrPoolClosed is returned after Pool.Close.
var ErrPoolClosed = errors.New("transport: pool closed")

// Back-off after a failed dial, or a connection whose peer stopped
// answering: new requests to that peer fail at once (so clients see an
// error quickly instead of each waiting for a connect timeout) until the
// back-off expires and one dial probes the peer; requests arriving while
// that probe is in flight fail at once too. The ceiling bounds how long a
// peer that came back waits for the next probe: traffic resumes within
// about maxBackoff of its return.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 500 * time.Millisecond
)

// ReasonUnresponsive is the PeerFailure reason of a pooled connection
// whose peer stopped answering (Limits.IdleTimeout passed without a
// packet from it, keep-alive PINGs included).
const ReasonUnresponsive = "unresponsive"

// A PeerFailure is the pool finding a peer unreachable, reported to the
// function given to Pool.OnPeerFailure: what failure accrual needs.
type PeerFailure struct {
	Addr string
	Peer identity.ID
	// Reason is bounded: HandshakeReason of a failed dial, or
	// ReasonUnresponsive.
	Reason string
	Err    error
}

// PeerConn is a live connection to one peer proxy, shared by everyone who
// sends to that peer.
type PeerConn struct {
	// Conn is the QUIC connection, for this package and its tests.
	Conn *quic.Conn
	h3   *http3.ClientConn // sends HTTP/3 requests on Conn
	pool *Pool
	addr string
	peer identity.ID

	active atomic.Int64 // requests and tunnels in flight (Begin): metrics, the liveness watch
	// streams counts the drain handshake's work: requests from before
	// their stream is opened until their response body is closed, tunnels
	// from before their stream is opened until both of its directions
	// have ended. Not Begin's count: a tunnel's owner counts it until its
	// app closes its TCP connection too, which may be long after the peer
	// has closed the stream both ways (and needs nothing more of it).
	streams atomic.Int64
	// drain is where the connection is in the drain handshake
	// (drainOpen, drainGoingAway, drainFinished): see goAway.
	drain atomic.Uint32
	// viaGateway: the peer is reached through a gateway (not probed for
	// port unreachable).
	viaGateway bool
	// declared: the liveness watch declared the peer dead.
	declared atomic.Bool
	// datagrams: the peer accepts DATAGRAM frames, the watch's PINGs.
	datagrams bool
	// liveness is the liveness watch's state (liveness.go).
	liveness livenessState
}

// Addr is the peer's address as dialled.
func (pc *PeerConn) Addr() string { return pc.addr }

// Peer is the identity the peer proved.
func (pc *PeerConn) Peer() identity.ID { return pc.peer }

// RoundTrip sends an HTTP request to the peer as an HTTP/3 request.
// Errors that prove the peer did not process the request are marked
// meshcode.ErrNotProcessed; those that prove the connection dead,
// meshcode.ErrConnDead.
func (pc *PeerConn) RoundTrip(req *http.Request) (*http.Response, error) {
	if !pc.notFinished() {
		return nil, requestError(errFinished)
	}
	var resp *http.Response
	var err error
	ok := false
	if bodyless(req) {
		resp, ok, err = pc.roundTripBodyless(req)
	}
	if !ok {
		resp, err = pc.h3.RoundTrip(req)
		if err == nil {
			resp.Body = &countedBody{ReadCloser: resp.Body, pc: pc}
		}
	}
	if err != nil {
		pc.streamEnded()
		return nil, requestError(err)
	}
	return resp, nil
}

// countedBody is the response body of a request sent by quic-go's
// RoundTrip: the request counts as work on its connection until it is
// closed (roundTripBodyless's watchedBody does the same).
type countedBody struct {
	io.ReadCloser
	pc     *PeerConn
	closed atomic.Bool
}

func (b *countedBody) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		defer b.pc.streamEnded()
	}
	return b.ReadCloser.Close()
}

// Forget stops the pool from handing out the connection (a stream-level
// failure showed it is broken): the next Get redials.
func (pc *PeerConn) Forget() { pc.pool.Forget(pc) }

// Begin counts one request or tunnel on the connection until the returned
// function is called. The liveness watch (Limits.LivenessTimeout) tells
// busy connections from idle ones by it.
func (pc *PeerConn) Begin() (end func()) {
	pc.active.Add(1)
	return func() { pc.active.Add(-1) }
}

// streamEnded ends a request or tunnel counted by notFinished.
func (pc *PeerConn) streamEnded() {
	if pc.streams.Add(-1) == 0 && pc.drain.Load() == drainGoingAway {
		pc.finish()
	}
}

// idle reports whether no request or tunnel is counted on pc.
func (pc *PeerConn) idle() bool { return pc.streams.Load() == 0 }

// Where a connection is in the drain handshake (docs/design.md,
// "Draining and GOAWAY").
const (
	drainOpen      uint32 = iota // in service
	drainGoingAway               // the peer sent GOAWAY or reconnect: no new streams; work in flight goes on
	drainFinished                // no work left: msgFinished sent (or being sent); no stream may be opened
)

// goAway starts the drain handshake of pc, whose peer sent GOAWAY or
// reconnect (the pool no longer hands pc out): once its requests and
// tunnels (streams) are done, pc says msgFinished, and the peer closes pc once it has
// served every stream pc opened.
func (pc *PeerConn) goAway() {
	if pc.drain.CompareAndSwap(drainOpen, drainGoingAway) && pc.idle() {
		pc.finish()
	}
}

// finish sends msgFinished if no work is counted on pc. It is called
// when the count may have reached zero after the GOAWAY. A stream opened
// after msgFinished could reach the peer after it closed the connection,
// so the count and the state are checked against each other as a pair:
// finish moves to drainFinished and then reads the count, while opening
// a stream counts first (notFinished) and then reads the state; one of
// the two sees the other. If finish sees work
// begun meanwhile, it moves back, and that work's end calls finish again.
func (pc *PeerConn) finish() {
	for pc.drain.CompareAndSwap(drainGoingAway, drainFinished) {
		if pc.idle() {
			go pc.sendFinished()
			return
		}
		pc.drain.Store(drainGoingAway)
		if !pc.idle() {
			return // that work's end calls finish
		}
	}
}

// sendFinished says msgFinished on pc. The peer closes pc when it has
// served the streams opened before; should it not (it fails to, or it
// is gone without a word), pc is closed here after maxRetireWait.
func (pc *PeerConn) sendFinished() {
	ctx, cancel := context.WithTimeout(pc.Conn.Context(), maxRetireWait)
	defer cancel()
	if err := sendFinished(ctx, pc.Conn); err != nil {
		pc.pool.ep.logger.Debug("sending finished failed", "peer", pc.addr, "identity", pc.peer.String(), "error", err)
	}
	select {
	case <-ctx.Done():
	case <-pc.pool.ctx.Done():
	}
	pc.Conn.CloseWithError(ConnCodeShutdown, "drained")
}

// notFinished counts a request or tunnel about to open its stream on pc,
// and reports false (having uncounted it) if pc has said msgFinished: the
// stream must then not be opened. The caller calls pc.streamEnded when
// it has ended.
func (pc *PeerConn) notFinished() bool {
	pc.streams.Add(1)
	if pc.drain.Load() == drainFinished {
		pc.streamEnded()
		return false
	}
	return true
}

// errFinished is why a stream is not opened on a connection that has
// said msgFinished: nothing was sent, so the request or tunnel may go to
// another connection (it is marked as unprocessed, like
// ErrStreamNotOpened).
var errFinished = fmt.Errorf("%w: the connection is drained", ErrStreamNotOpened)

// OpenTunnel opens a stream on the connection and writes the tunnel
// header for target. The caller owns the stream. Errors are marked as
// RoundTrip's are.
func (pc *PeerConn) OpenTunnel(ctx context.Context, target string) (*Stream, error) {
	return pc.OpenTunnelHeader(ctx, tunnel.Header{Target: target})
}

// OpenTunnelHeader is OpenTunnel with a whole header: extensions such as
// the original destination port (tunnel.ExtDestPort) included.
//
// The tunnel counts as work on the connection for the drain handshake
// from before its stream is opened until both of its directions have
// ended (Stream).
func (pc *PeerConn) OpenTunnelHeader(ctx context.Context, h tunnel.Header) (*Stream, error) {
	if !pc.notFinished() {
		return nil, requestError(errFinished)
	}
	str, err := pc.openTunnel(ctx, h)
	if err != nil {
		pc.streamEnded()
		return nil, requestError(err)
	}
	s := &Stream{str: str, hdr: h, pc: pc}
	// The send direction has ended when quic-go's send side has: we sent
	// FIN or reset it, the peer sent STOP_SENDING (it reads no more, as
	// when a TCP peer closed its socket: what we would send is dropped),
	// or the connection closed.
	context.AfterFunc(str.Context(), func() { s.done(streamWriteEnded) })
	return s, nil
}

func (pc *PeerConn) openTunnel(ctx context.Context, h tunnel.Header) (*quic.Stream, error) {
	hdr, err := h.AppendTo(make([]byte, 0, 64))
	if err != nil {
		return nil, err
	}
	str, err := pc.Conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() == nil {
			// Nothing was sent: the connection is gone.
			err = fmt.Errorf("%w: %w", ErrStreamNotOpened, err)
		}
		return nil, fmt.Errorf("transport: opening stream to %s: %w", pc.addr, err)
	}
	if _, err := str.Write(hdr); err != nil {
		str.CancelRead(CodeReset)
		str.CancelWrite(CodeReset)
		return nil, fmt.Errorf("transport: writing tunnel header to %s: %w", pc.addr, err)
	}
	return str, nil
}

// Alive reports whether the connection is still usable.
func (pc *PeerConn) Alive() bool { return pc.Conn.Context().Err() == nil }

type peerKey struct {
	addr string
	id   identity.ID
}

type peerState struct {
	conn    *PeerConn
	dialing chan struct{} // closed when the dial in flight finishes
	PeerBackoff
}

// Pool keeps one connection per (peer address, expected identity) and
// coalesces concurrent dials to the same peer.
type Pool struct {
	ep      *Endpoint
	h3      *http3.Transport
	mu      sync.Mutex
	peers   map[peerKey]*peerState
	closed  bool
	ctx     context.Context
	cancel  context.CancelFunc
	dialsWG sync.WaitGroup
	now     func() time.Time
	// logs rate-limits dial-failure lines per peer and reason.
	logs      *lograte.Limiter
	onFailure atomic.Pointer[func(PeerFailure)]
	// live holds every open connection, pooled or not (one dropped from
	// the pool may still carry work), for the liveness watch.
	live                map[*PeerConn]struct{}
	livenessStarved     atomic.Uint64
	livenessPings       atomic.Uint64
	livenessDeclared    atomic.Uint64
	livenessProbes      atomic.Uint64
	livenessUnreachable atomic.Uint64
	livenessDeferred    atomic.Uint64
	// oldDrain: PlayOldDrain.
	oldDrain atomic.Bool
	// stallHook, if set (tests), adds a stall of this process to what
	// each of the watch's polls measured.
	stallHook atomic.Pointer[func() time.Duration]
}

// OnPeerFailure makes the pool call fn (from its own goroutines, never
// with a lock held; fn must not block) whenever a dial fails or a pooled
// connection dies because its peer stopped answering. A stateless reset
// (the peer restarted and is back) and a drain notice are not failures.
func (p *Pool) OnPeerFailure(fn func(PeerFailure)) { p.onFailure.Store(&fn) }

func (p *Pool) reportFailure(f PeerFailure) {
	if fn := p.onFailure.Load(); fn != nil && *fn != nil {
		(*fn)(f)
	}
}

// NewPool creates a pool that dials through ep.
func NewPool(ep *Endpoint) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		ep: ep,
		// The proxy forwards what the app sent: never add Accept-Encoding
		// or transparently decompress.
		h3:     &http3.Transport{DisableCompression: true, MaxResponseHeaderBytes: 64 << 10, Logger: ep.logger},
		peers:  make(map[peerKey]*peerState),
		ctx:    ctx,
		cancel: cancel,
		now:    ep.cfg.Now,
		logs:   lograte.New(0, 0, ep.cfg.Now),
		live:   make(map[*PeerConn]struct{}),
	}
	if ep.limits.LivenessTimeout > 0 {
		p.dialsWG.Add(1)
		go p.watchLiveness()
	}
	return p
}

// Get returns the shared connection to the peer at addr that must present
// identity want, dialing it if needed.
func (p *Pool) Get(ctx context.Context, addr string, want identity.ID) (*PeerConn, error) {
	key := peerKey{addr, want}
	// rejoined: this Get has waited for another caller's probe of a
	// restarting peer that failed, and waits for the next.
	rejoined := false
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		st := p.peers[key]
		if st == nil {
			st = &peerState{}
			p.peers[key] = st
		}
		if st.conn != nil && st.conn.Alive() {
			pc := st.conn
			p.mu.Unlock()
			return pc, nil
		}
		st.conn = nil
		if now := p.now(); st.FailsFast(now, st.dialing != nil) {
			// The peer failed recently without having said goodbye:
			// during the back-off and while the probe that ends it is in
			// flight, fail at once rather than keep callers waiting on a
			// peer that is likely down. Read under the lock: a dial in
			// flight updates them.
			err, ago, probing := st.LastErr, now.Sub(st.FailedAt).Round(time.Millisecond), st.dialing != nil
			p.mu.Unlock()
			if probing {
				return nil, fmt.Errorf("%w: %s (%s): probing the peer, which failed %s ago: %w", ErrPeerUnavailable, addr, want, ago, err)
			}
			return nil, fmt.Errorf("%w: %s (%s): last failed %s ago: %w", ErrPeerUnavailable, addr, want, ago, err)
		}
		joined := st.dialing != nil
		if !joined {
			st.dialing = make(chan struct{})
			p.dialsWG.Add(1)
			go p.dial(key, st)
		}
		dialing := st.dialing
		p.mu.Unlock()

		select {
		case <-dialing:
		case <-ctx.Done():
			return nil, fmt.Errorf("transport: waiting for connection to %s: %w", addr, ctx.Err())
		}
		p.mu.Lock()
		pc, err, restarting := st.conn, st.LastErr, st.Restarting(p.now())
		p.mu.Unlock()
		if pc != nil && pc.Alive() {
			return pc, nil
		}
		if pc != nil && err == nil {
			// Closed right after the handshake (a draining peer refuses new
			// connections that way): do not spin redialling it.
			err = fmt.Errorf("%s (%s): connection closed right after the handshake: %w", addr, want, context.Cause(pc.Conn.Context()))
		}
		if err != nil && restarting && joined && !rejoined {
			// The probe this Get waited for was another caller's, begun
			// perhaps before the restarting peer listened again: its
			// answer may be older than this Get. Wait for one more,
			// begun by the first caller back here, the others joining
			// it.
			rejoined = true
			continue
		}
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrPeerUnavailable, err)
			if restarting {
				err = meshcode.Mark(err, meshcode.ErrPeerRestarting)
			}
			return nil, err
		}
	}
}

// dial runs detached from any one caller's context so that a caller giving
// up does not fail the others waiting on the same dial.
func (p *Pool) dial(key peerKey, st *peerState) {
	defer p.dialsWG.Done()
	pc, err := p.connect(key)
	var failure *PeerFailure
	defer func() {
		if failure != nil {
			p.reportFailure(*failure)
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() { close(st.dialing); st.dialing = nil }()
	if err != nil {
		if p.closed {
			st.LastErr = ErrPoolClosed
			return
		}
		reason := HandshakeReason(err)
		failure = &PeerFailure{Addr: key.addr, Peer: key.id, Reason: reason, Err: err}
		p.ep.cfg.Observer.HandshakeFailed(true, reason)
		st.Fail(err, p.now(), reason == ReasonRefused)
		args := []any{"peer", key.addr, "identity", key.id.String(), "reason", reason, "failures", st.Failures, "error", err}
		if de, ok := errors.AsType[*DialError](err); ok && de.Presented != "" {
			args = append(args, "presented_identity", de.Presented)
		}
		p.logs.Log(p.ep.logger, slog.LevelWarn, key.addr+"|"+reason, "peer dial failed", args...)
		return
	}
	if p.closed {
		pc.Conn.CloseWithError(ConnCodePoolClosed, "pool closed")
		st.LastErr = ErrPoolClosed
		return
	}
	st.Reset()
	st.conn = pc
	p.live[pc] = struct{}{}
	conn := pc.Conn
	// A connection is only as good as the certificate it was
	// authenticated with: retire it when the peer's certificate expires.
	if certs := conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
		retire := time.AfterFunc(time.Until(certs[0].NotAfter), func() { p.retire(pc) })
		context.AfterFunc(conn.Context(), func() { retire.Stop() })
	}
	p.ep.logger.Debug("peer connected", "peer", key.addr, "identity", key.id.String())
}

// connect dials the peer and waits until the peer has accepted the
// connection. With TLS 1.3 the client's handshake completes before the
// server has verified the client's certificate, so a finished dial does
// not mean the server will not close the connection right away (bad
// certificate, draining). The server's HTTP/3 SETTINGS are the cheapest
// proof that it did not: the inbound side sends them only after its own
// handshake completed and it took the connection into service, in the
// same flight as HANDSHAKE_DONE (which quic-go does not expose), so
// waiting costs no extra round trip on a healthy connection. The wait is
// bounded by the handshake timeout; a refusal is a failed dial.
func (p *Pool) connect(key peerKey) (*PeerConn, error) {
	conn, err := p.ep.Dial(p.ctx, key.addr, key.id)
	if err != nil {
		return nil, err
	}
	raw := p.h3.NewRawClientConn(conn)
	_, serverName := discovery.SplitDialAddr(key.addr)
	pc := &PeerConn{Conn: conn, h3: raw.ClientConn, pool: p, addr: key.addr, peer: key.id, viaGateway: serverName != ""}
	go p.acceptUni(pc, raw)
	timer := time.NewTimer(p.ep.limits.HandshakeTimeout)
	defer timer.Stop()
	var cause error
	select {
	case <-raw.ReceivedSettings():
		pc.datagrams = conn.ConnectionState().SupportsDatagrams.Remote
		if !p.oldDrain.Load() {
			// Queued before any stream the pool's users open, so it
			// leaves with or before the first of them.
			if err := sayDrainAware(conn); err != nil {
				p.ep.logger.Debug("sending drain-aware failed", "peer", key.addr, "error", err)
			}
		}
		return pc, nil
	case <-conn.Context().Done():
		cause = context.Cause(conn.Context())
	case <-timer.C:
		cause = fmt.Errorf("no HTTP/3 SETTINGS within the handshake timeout (%v)", p.ep.limits.HandshakeTimeout)
		conn.CloseWithError(ConnCodeShutdown, "not accepted in time")
	case <-p.ctx.Done():
		conn.CloseWithError(ConnCodePoolClosed, "pool closed")
		return nil, ErrPoolClosed
	}
	reason := HandshakeReason(cause)
	if reason == identity.ReasonOther {
		reason = ReasonNotAccepted
	}
	return nil, &DialError{Addr: key.addr, Want: key.id, Reason: reason, Err: fmt.Errorf("%w: %w", errNotAccepted, cause)}
}

// acceptUni runs the connection's unidirectional stream loop: HTTP/3
// control and QPACK streams go to HTTP/3, mesh control streams are ours.
// It ends, and drops the connection from the pool, when the connection
// closes.
func (p *Pool) acceptUni(pc *PeerConn, raw *http3.RawClientConn) {
	defer func() {
		// A peer that closed the connection because it is shutting down
		// gets the same back-off as one that announced a drain; one that
		// stopped answering is a failed peer, in back-off as after a
		// failed dial.
		var ae *quic.ApplicationError
		var it *quic.IdleTimeoutError
		// quic-go fails the stream accept before it cancels the
		// connection's context with the reason.
		<-pc.Conn.Context().Done()
		switch err := context.Cause(pc.Conn.Context()); {
		case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == ConnCodeShutdown:
			p.markDraining(pc)
		case errors.As(err, &ae) && !ae.Remote && ae.ErrorCode == ConnCodeUnresponsive:
			// The liveness watch closed it, and has put the peer in
			// back-off and reported it already.
		case errors.As(err, &it):
			err = meshcode.Mark(fmt.Errorf("transport: peer %s (%s) stopped answering: %w", pc.addr, pc.peer, err), meshcode.ErrConnDead, meshcode.ErrIdleTimeout)
			if p.markFailed(pc, err) {
				p.ep.logger.Warn("peer stopped answering: connection closed", "peer", pc.addr, "identity", pc.peer.String(), "idle_timeout", p.ep.limits.IdleTimeout)
				p.reportFailure(PeerFailure{Addr: pc.addr, Peer: pc.peer, Reason: ReasonUnresponsive, Err: err})
			}
		}
		p.Forget(pc)
		p.mu.Lock()
		delete(p.live, pc)
		p.mu.Unlock()
	}()
	for {
		str, err := pc.Conn.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			str.SetReadDeadline(time.Now().Add(10 * time.Second))
			if !isControlStream(str) {
				str.SetReadDeadline(time.Time{})
				raw.HandleUnidirectionalStream(str)
				return
			}
			msg, err := readControl(str)
			if err != nil {
				str.CancelRead(CodeBadHeader)
				return
			}
			// Other messages are ignored: a later version may send them.
			switch msg {
			case msgGoAway:
				p.ep.logger.Info("peer is draining", "peer", pc.addr, "identity", pc.peer.String())
				p.markDraining(pc)
				p.goAway(pc)
			case msgReconnect:
				p.ep.logger.Debug("peer retires the connection", "peer", pc.addr, "identity", pc.peer.String())
				p.Forget(pc)
				p.goAway(pc)
			}
		}()
	}
}

// PlayOldDrain makes the pool behave, from its next connection on, as one
// from before the drain handshake: it neither says it takes part nor says
// when it has finished, and its peers drain its connections with the
// quiet period. For tests of mixed versions.
func (p *Pool) PlayOldDrain(old bool) { p.oldDrain.Store(old) }

// goAway starts pc's side of the drain handshake, unless the pool plays
// a version without it (PlayOldDrain).
func (p *Pool) goAway(pc *PeerConn) {
	if !p.oldDrain.Load() {
		pc.goAway()
	}
}

// markDraining stops handing out pc and holds off redialling its peer for
// a back-off period, so new work goes to other endpoints right away while
// the peer restarts.
func (p *Pool) markDraining(pc *PeerConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[peerKey{pc.addr, pc.peer}]
	if st == nil || st.conn != pc {
		return
	}
	st.conn = nil
	st.Drain(errDraining, p.now())
}

var errDraining = errors.New("peer is draining")

// markFailed stops handing out pc, whose peer stopped answering, and puts
// the peer in back-off; false if the pool has since connected afresh (or
// closed). A request that failed on pc may already have made the proxy
// Forget it: the peer failed all the same.
func (p *Pool) markFailed(pc *PeerConn, err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := peerKey{pc.addr, pc.peer}
	st := p.peers[key]
	if p.closed || st != nil && st.conn != nil && st.conn != pc {
		return false
	}
	if st == nil {
		st = &peerState{}
		p.peers[key] = st
	}
	st.conn = nil
	st.Fail(err, p.now(), false)
	return true
}

// retire stops handing out pc and closes it once its in-flight work is
// done (or after maxRetireWait); the next Get dials a fresh connection.
func (p *Pool) retire(pc *PeerConn) {
	p.ep.logger.Info("retiring peer connection: peer certificate expired", "peer", pc.addr, "identity", pc.peer.String())
	p.mu.Lock()
	if st := p.peers[peerKey{pc.addr, pc.peer}]; st != nil && st.conn == pc {
		st.conn = nil
	}
	p.mu.Unlock()
	go func() {
		deadline := time.Now().Add(maxRetireWait)
		for pc.active.Load() > 0 && time.Now().Before(deadline) && pc.Alive() {
			time.Sleep(50 * time.Millisecond)
		}
		pc.Conn.CloseWithError(ConnCodeIdentity, "peer certificate expired")
	}()
}

// maxRetireWait bounds how long a retired connection may finish work.
const maxRetireWait = 30 * time.Second

// Unavailable reports whether the peer is in back-off after a failed dial,
// a dead connection or a drain notice, for the balancer to prefer other
// endpoints: whenever Get would fail at once (a peer that did not answer,
// during its back-off and while the one dial probing it is in flight),
// and during the back-off of a peer that answered (it refused or is
// draining; Get probes it).
func (p *Pool) Unavailable(addr string, want identity.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[peerKey{addr, want}]
	if st == nil || st.conn != nil && st.conn.Alive() {
		return false
	}
	return st.Avoided(p.now(), st.dialing != nil)
}

// Backoff is how long new requests to a peer fail at once after its
// failures-th failure in a row: the same schedule for every transport.
func Backoff(failures int) time.Duration { return backoff(failures) }

func backoff(failures int) time.Duration {
	d := minBackoff << min(failures-1, 10)
	return min(d, maxBackoff)
}

// ConnStats is a snapshot of one live QUIC connection, for metrics.
type ConnStats struct {
	Peer        identity.ID
	RTT         time.Duration // smoothed RTT
	PacketsLost uint64        // since the connection started
	PacketsSent uint64        // since the connection started
	StreamsOpen int
}

func connStats(peer identity.ID, conn *quic.Conn, streams int64) ConnStats {
	st := conn.ConnectionStats()
	return ConnStats{Peer: peer, RTT: st.SmoothedRTT, PacketsLost: st.PacketsLost, PacketsSent: st.PacketsSent, StreamsOpen: int(streams)}
}

// QUICStats snapshots every pooled connection; StreamsOpen counts the
// requests and tunnels in flight (PeerConn.Begin).
func (p *Pool) QUICStats() []ConnStats {
	p.mu.Lock()
	conns := make([]*PeerConn, 0, len(p.peers))
	for _, st := range p.peers {
		if st.conn != nil && st.conn.Alive() {
			conns = append(conns, st.conn)
		}
	}
	p.mu.Unlock()
	out := make([]ConnStats, 0, len(conns))
	for _, pc := range conns {
		out = append(out, connStats(pc.peer, pc.Conn, pc.active.Load()))
	}
	return out
}

// Len reports how many live connections the pool holds.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, st := range p.peers {
		if st.conn != nil && st.conn.Alive() {
			n++
		}
	}
	return n
}

// Forget drops the pooled connection to a peer after a stream-level
// failure showed it is broken, so the next Get redials.
func (p *Pool) Forget(pc *PeerConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := peerKey{pc.addr, pc.peer}
	if st := p.peers[key]; st != nil && st.conn == pc {
		st.conn = nil
		p.sweep()
	}
}

// sweep drops state of peers with no connection, no dial in flight and
// no back-off in force, so endpoint churn cannot grow the map forever.
// Called with p.mu held.
func (p *Pool) sweep() {
	now := p.now()
	for k, st := range p.peers {
		if st.conn == nil && st.dialing == nil && st.Expired(now) {
			delete(p.peers, k)
		}
	}
}

// Close closes every pooled connection and waits for dials in flight.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	var conns []*PeerConn
	for _, st := range p.peers {
		if st.conn != nil {
			conns = append(conns, st.conn)
		}
	}
	p.mu.Unlock()
	for _, pc := range conns {
		pc.h3.CloseWithError(ConnCodePoolClosed, "pool closed")
	}
	p.dialsWG.Wait()
	return nil
}
