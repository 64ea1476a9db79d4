// Package fallback chooses, per peer, between the QUIC transport and the
// TCP one (transport/h2tcp). It knows neither: it is given two pools as
// Dialers of the same connection type, so proxy/sidecar instantiates it
// with the proxy's own connection interface.
//
// Policy (docs/design.md, "Fallback to TCP"):
//   - first contact races QUIC against TCP with a head start for QUIC
//     (RaceDelay, default 250 ms, happy-eyeballs style): a peer that
//     answers QUIC within it never sees a TCP dial;
//   - a peer whose QUIC dial fails while TCP works is marked QUIC-blocked
//     and used over TCP; QUIC is re-probed in the background with
//     exponential back-off (ReprobeMin doubling to ReprobeMax);
//   - when a probe succeeds, new work goes to QUIC and the TCP connection
//     drains (work in flight finishes on it);
//   - a peer whose QUIC connection stopped answering is suspect
//     (QUICFailed): its Gets dial both transports at once and wait for
//     either no longer than a short suspect wait, a QUIC redial
//     included: a live peer behind a UDP block answers TLS within a few
//     round trips, a frozen one answers neither;
//   - a peer that failed over both transports for lack of an answer is
//     in back-off: Get fails at once, one probe at a time.
//
// Both transports run the same mutual TLS with the same identity checks,
// so falling back never weakens authentication: an attacker who blocks
// UDP gets the same certificate checks over TCP, never a plaintext path.
package fallback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Mode is the transport policy.
type Mode string

const (
	// Auto races QUIC against TCP per peer and falls back (the default).
	Auto Mode = "auto"
	// QUIC only: a peer unreachable over UDP is unreachable.
	QUIC Mode = "quic"
	// TCP only: HTTP/2 over TLS over TCP, no QUIC at all.
	TCP Mode = "tcp"
)

// ParseMode parses a configured mode; "" is Auto.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", Auto:
		return Auto, nil
	case QUIC, TCP:
		return Mode(s), nil
	}
	return "", fmt.Errorf("fallback: transport %q: want quic, tcp or auto", s)
}

// Transport names the transport a connection runs on.
type Transport string

const (
	OverQUIC Transport = "quic"
	OverTCP  Transport = "tcp"
)

// Conn is what the policy needs of a connection.
type Conn interface{ Alive() bool }

// Dialer is one transport's pool.
type Dialer[C Conn] interface {
	Get(ctx context.Context, addr string, want identity.ID) (C, error)
	Unavailable(addr string, want identity.ID) bool
}

// Drainer is implemented by a pool that can retire its connection to a
// peer gracefully (the TCP pool when a peer moves back to QUIC).
type Drainer interface {
	Drain(addr string, want identity.ID)
}

// Observer is told about the policy's decisions (for metrics).
type Observer interface {
	// FellBack: a peer was marked QUIC-blocked and moved to TCP.
	FellBack()
	// Reprobed: a background QUIC probe of a blocked peer ended, ok
	// when QUIC works again (the peer moves back).
	Reprobed(ok bool)
}

type noObserver struct{}

func (noObserver) FellBack()     {}
func (noObserver) Reprobed(bool) {}

// Defaults, documented in docs/operations.md.
const (
	// DefaultRaceDelay is QUIC's head start: well above a LAN or
	// in-region handshake (1 RTT, a few ms) and the 1 s retransmission
	// of a lost first Initial is not waited for, so a peer behind a UDP
	// block costs 250 ms + the TCP dial on first contact.
	DefaultRaceDelay  = 250 * time.Millisecond
	DefaultReprobeMin = time.Second
	DefaultReprobeMax = 30 * time.Second
)

// Config configures a Peers.
type Config struct {
	Mode Mode
	// RaceDelay is QUIC's head start on first contact (default
	// DefaultRaceDelay).
	RaceDelay time.Duration
	// ReprobeMin and ReprobeMax bound the back-off between QUIC probes
	// of a blocked peer (defaults DefaultReprobeMin, DefaultReprobeMax).
	ReprobeMin, ReprobeMax time.Duration
	// ProbeTimeout bounds one QUIC probe (default 5 s; the QUIC pool's
	// handshake timeout ends it first).
	ProbeTimeout time.Duration
	Logger       *slog.Logger
	Observer     Observer
	// Now is the clock of the peers' back-off; nil is time.Now.
	Now func() time.Time
}

type key struct {
	addr string
	id   identity.ID
}

// peer is the policy's state of one peer.
type peer struct {
	blocked  bool          // QUIC failed while TCP worked: use TCP
	lastQUIC bool          // the last connection handed out was QUIC
	interval time.Duration // the next re-probe wait
	probing  bool

	// suspectWait, when set, bounds how long a Get waits for a
	// connection over either transport: QUIC's connection to the peer
	// stopped answering (QUICFailed, or the hot path found the QUIC pool
	// without one and without an answer), and until a connection works
	// again the peer is suspect. Cleared on success.
	suspectWait time.Duration
	// Both transports failed for lack of an answer (a frozen or
	// partitioned peer): during the back-off after failedAt, and while
	// the one Get that probes it is in flight, Get fails at once.
	failures int
	failedAt time.Time
	lastErr  error
	dialing  bool
}

// downBackoff is the back-off of a peer that failed over both
// transports: the pools' schedule (transport.Backoff, 100 ms doubling to
// 500 ms), so a thawed peer is reached as soon as either pool would.
func downBackoff(failures int) time.Duration {
	return min(100*time.Millisecond<<min(failures-1, 10), 500*time.Millisecond)
}

// Peers hands out connections to peers over QUIC or TCP by the policy.
type Peers[C Conn] struct {
	quic, tcp Dialer[C]
	cfg       Config

	mu     sync.Mutex
	peers  map[key]*peer
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns the policy over the two pools (either may be nil when the
// mode does not use it).
func New[C Conn](quic, tcp Dialer[C], cfg Config) *Peers[C] {
	if cfg.Mode == "" {
		cfg.Mode = Auto
	}
	if cfg.RaceDelay <= 0 {
		cfg.RaceDelay = DefaultRaceDelay
	}
	if cfg.ReprobeMin <= 0 {
		cfg.ReprobeMin = DefaultReprobeMin
	}
	if cfg.ReprobeMax < cfg.ReprobeMin {
		cfg.ReprobeMax = max(DefaultReprobeMax, cfg.ReprobeMin)
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Peers[C]{quic: quic, tcp: tcp, cfg: cfg, peers: map[key]*peer{}, ctx: ctx, cancel: cancel}
}

// Mode is the configured mode.
func (p *Peers[C]) Mode() Mode { return p.cfg.Mode }

// Get returns a connection to the peer at addr that must prove identity
// want, and the transport it runs on.
func (p *Peers[C]) Get(ctx context.Context, addr string, want identity.ID) (C, Transport, error) {
	switch p.cfg.Mode {
	case QUIC:
		c, err := p.quic.Get(ctx, addr, want)
		return c, OverQUIC, err
	case TCP:
		c, err := p.tcp.Get(ctx, addr, want)
		return c, OverTCP, err
	}
	k := key{addr, want}
	p.mu.Lock()
	st := p.peers[k]
	if st == nil {
		st = &peer{}
		p.peers[k] = st
	}
	probe := false
	if st.failures > 0 {
		since := p.cfg.Now().Sub(st.failedAt)
		if st.dialing || since < downBackoff(st.failures) {
			err := st.lastErr
			p.mu.Unlock()
			var zero C
			return zero, OverQUIC, fmt.Errorf("%w: %s (%s): no answer over QUIC nor TCP %s ago: %w", meshcode.ErrPeerUnavailable, addr, want, since.Round(time.Millisecond), err)
		}
		// This Get probes the peer; the others fail at once meanwhile.
		st.dialing, probe = true, true
	}
	p.mu.Unlock()
	c, over, err := p.get(ctx, k)
	p.settle(ctx, k, probe, err)
	return c, over, err
}

// get is Get in auto mode once the peer is not in back-off.
func (p *Peers[C]) get(ctx context.Context, k key) (C, Transport, error) {
	addr, want := k.addr, k.id
	p.mu.Lock()
	st := p.peers[k]
	blocked, lastQUIC, wait := st.blocked, st.lastQUIC, st.suspectWait
	p.mu.Unlock()
	if lastQUIC && wait == 0 {
		// The QUIC connection is most likely pooled: no race on the hot
		// path. A failure falls through to the race.
		c, err := p.quic.Get(ctx, addr, want)
		if err == nil {
			return c, OverQUIC, nil
		}
		if ctx.Err() == nil && pathFailure(err) {
			// No connection and no answer: the one the policy was using
			// died of silence (the pool is in back-off after its
			// liveness verdict) or a redial got no answer. The peer is
			// suspect, as when a connection dies under a request
			// (QUICFailed), which only a replayable request reports.
			wait = p.suspect(k, 0)
		}
	}
	if wait > 0 {
		// A suspect peer: its QUIC connection just stopped answering.
		// Neither transport is waited for longer than the suspect wait,
		// the QUIC redial included: a frozen peer answers neither, and
		// its QUIC dial would hold the Get for the whole dial timeout.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, wait, fmt.Errorf("%w: no connection within %v of QUIC's liveness failure", errSuspectWait, wait))
		defer cancel()
	}
	if blocked {
		c, err := p.tcpGet(ctx, k)
		if err == nil {
			return c, OverTCP, nil
		}
		// TCP failed too (the peer may have come back QUIC-only): try
		// QUIC before giving up, once.
		qc, qerr := p.quic.Get(ctx, addr, want)
		if qerr != nil {
			var zero C
			return zero, OverTCP, errors.Join(err, suspectCause(ctx, qerr))
		}
		p.unblock(k, "QUIC dial succeeded after TCP failed")
		return qc, OverQUIC, nil
	}
	// No head start for QUIC at a suspect peer: QUIC just stopped
	// answering, and the race has only the suspect wait.
	delay := p.cfg.RaceDelay
	if wait > 0 {
		delay = 0
	}
	return p.race(ctx, k, delay)
}

// settle records the outcome of an auto-mode Get: a success clears the
// peer's suspicion and back-off; a failure of both transports that was
// no answer at all (a frozen or partitioned peer, not one that refused
// us) puts it in back-off, so that retries and further requests fail at
// once instead of each paying a dial. probe: this Get was the one let
// through after the back-off; Gets that started before the back-off and
// fail later do not extend it.
func (p *Peers[C]) settle(ctx context.Context, k key, probe bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[k]
	if st == nil {
		return
	}
	if probe {
		st.dialing = false
	}
	if err == nil {
		st.failures, st.lastErr, st.suspectWait = 0, nil, 0
		return
	}
	// A caller that gave up says nothing about the peer.
	if !bothSilent(err) || ctx.Err() != nil || p.ctx.Err() != nil || (st.failures > 0 && !probe) {
		return
	}
	st.failures++
	st.failedAt = p.cfg.Now()
	st.lastErr = err
	if st.failures == 1 {
		p.cfg.Logger.Warn("peer answers neither over QUIC nor over TCP: failing its requests at once during back-off", "peer", k.addr, "identity", k.id.String(), "error", err)
	}
}

// bothSilent reports whether err joins a QUIC and a TCP failure that
// were both the path's (nothing answered), as race and the blocked path
// return them.
func bothSilent(err error) bool {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return false
	}
	errs := j.Unwrap()
	if len(errs) != 2 {
		return false
	}
	return pathFailure(errs[0]) && pathFailure(errs[1])
}

// tcpGet gets the TCP connection; a context ended by a suspect peer's
// wait (get) says so in the error. The pool's dial goes on (bounded by
// its own dial timeout) and is what the next Get finds.
func (p *Peers[C]) tcpGet(ctx context.Context, k key) (C, error) {
	c, err := p.tcp.Get(ctx, k.addr, k.id)
	return c, suspectCause(ctx, err)
}

// suspectCause wraps into err the suspect wait's error if that is what
// ended ctx.
func suspectCause(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errSuspectWait) && !errors.Is(err, errSuspectWait) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return err
}

// errSuspectWait: a connection to a peer whose QUIC connection just
// stopped answering did not come within the suspect wait.
var errSuspectWait = errors.New("fallback: the peer did not answer in time")

type result[C Conn] struct {
	c   C
	err error
}

// race dials QUIC, and TCP after the head start delay (or at once when
// QUIC fails first); the first success wins. A QUIC failure while TCP
// works marks the peer blocked, also when TCP won the race and QUIC
// failed later. The race ends with ctx: a caller that gave up, or a
// suspect peer's wait (get), is not held for a QUIC dial still in flight
// (it goes on, bounded by ProbeTimeout, and its outcome still marks the
// peer).
func (p *Peers[C]) race(ctx context.Context, k key, delay time.Duration) (C, Transport, error) {
	var zero C
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	quicDone := make(chan result[C], 1)
	// The QUIC attempt outlives a lost race (bounded by ProbeTimeout),
	// so that its failure still marks the peer.
	qctx, qcancel := context.WithTimeout(p.ctx, p.cfg.ProbeTimeout)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer qcancel()
		c, err := p.quic.Get(qctx, k.addr, k.id)
		quicDone <- result[C]{c, err}
	}()
	// Once the race is over, a QUIC attempt still in flight decides the
	// mark when it ends.
	quicLate := func() {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if q := <-quicDone; q.err != nil {
				p.blockIf(k, q.err)
			} else {
				p.chose(k, false)
			}
		}()
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	var quicRes *result[C]
	select {
	case r := <-quicDone:
		if r.err == nil {
			p.chose(k, false)
			return r.c, OverQUIC, nil
		}
		if !pathFailure(r.err) {
			// The peer answered over UDP (it refused us, or we refused
			// its certificate): TCP would not do better.
			return zero, OverQUIC, r.err
		}
		quicRes = &r
	case <-timer.C:
	case <-ctx.Done():
		quicLate()
		return zero, OverQUIC, suspectCause(ctx, ctx.Err())
	}
	tcpDone := make(chan result[C], 1)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c, err := p.tcpGet(rctx, k)
		tcpDone <- result[C]{c, err}
	}()
	var tcpRes *result[C]
	for quicRes == nil || tcpRes == nil {
		select {
		case r := <-quicDone:
			quicRes = &r
			if r.err == nil {
				p.chose(k, false)
				// A TCP dial still in flight is cancelled (rctx); one the
				// pool completes anyway stays pooled, unused, until its
				// peer's health check or the pool's close ends it.
				return r.c, OverQUIC, nil
			}
		case r := <-tcpDone:
			tcpRes = &r
			if r.err == nil {
				if quicRes != nil {
					p.blockIf(k, quicRes.err)
				} else {
					// Won the race; QUIC's fate decides the mark.
					quicLate()
				}
				return r.c, OverTCP, nil
			}
		case <-ctx.Done():
			// Out of time (the caller's, or a suspect peer's wait): a
			// QUIC dial still in flight is not waited for, and TCP's Get
			// ends with ctx (rctx).
			errs := make([]error, 2)
			if quicRes != nil {
				errs[0] = quicRes.err
			} else {
				quicLate()
				errs[0] = suspectCause(ctx, fmt.Errorf("QUIC: %w", ctx.Err()))
			}
			if tcpRes != nil {
				errs[1] = tcpRes.err
			} else {
				errs[1] = suspectCause(ctx, fmt.Errorf("TCP: %w", ctx.Err()))
			}
			return zero, OverQUIC, errors.Join(errs...)
		}
	}
	return zero, OverQUIC, errors.Join(quicRes.err, tcpRes.err)
}

func (p *Peers[C]) chose(k key, blocked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.peers[k]; st != nil && !st.blocked {
		st.lastQUIC = !blocked
	}
}

// pathFailure reports whether a QUIC dial failure looks like a path that
// does not carry UDP (no answer in time, or nothing we can classify)
// rather than an answer from the peer: only then is TCP worth trying.
// The reason is the transport's bounded failure reason, found through
// the FailureReason method of its dial errors.
func pathFailure(err error) bool {
	if errors.Is(err, meshcode.ErrPeerRestarting) {
		// The peer said goodbye over QUIC and is restarting: TCP would
		// not do better, and the peer must not be marked QUIC-blocked.
		return false
	}
	r, ok := errors.AsType[interface {
		error
		FailureReason() string
	}](err)
	return !ok || PathReason(r.FailureReason())
}

// PathReason reports whether a transport's bounded failure reason is
// the path's (nothing answered) rather than the peer's own answer. In
// auto mode such a QUIC failure is the fallback's to handle: the peer may
// well be reachable over TCP.
func PathReason(reason string) bool {
	switch reason {
	case "timeout", "other", "not_accepted", "unresponsive", "unreachable":
		// "unreachable": ICMP port unreachable, which a firewall that
		// rejects UDP sends as well as a host whose peer is gone.
		return true
	}
	return false
}

// blockIf marks the peer QUIC-blocked if QUIC's failure was the path's.
func (p *Peers[C]) blockIf(k key, quicErr error) {
	if pathFailure(quicErr) {
		p.block(k, quicErr)
	}
}

// block marks the peer QUIC-blocked and starts the re-prober.
func (p *Peers[C]) block(k key, quicErr error) {
	p.mu.Lock()
	st := p.peers[k]
	if st == nil || st.blocked || p.ctx.Err() != nil {
		p.mu.Unlock()
		return
	}
	st.blocked, st.lastQUIC = true, false
	st.interval = p.cfg.ReprobeMin
	start := !st.probing
	st.probing = true
	p.mu.Unlock()
	p.cfg.Observer.FellBack()
	p.cfg.Logger.Warn("peer unreachable over QUIC, using TCP", "peer", k.addr, "identity", k.id.String(), "from", OverQUIC, "to", OverTCP, "reprobe_in", p.cfg.ReprobeMin, "quic_error", quicErr)
	if start {
		p.wg.Add(1)
		go p.reprobe(k)
	}
}

// QUICFailed tells the policy that a connection it handed out over QUIC
// died under its work (the peer stopped answering; rtt is that
// connection's smoothed RTT, 0 if unknown): the next Get races again
// instead of trusting the QUIC pool, and until a connection works again
// a Get dials both transports at once and waits for either no longer
// than SuspectWait(rtt). A live peer whose UDP is dropped answers the
// TCP dial within a few round trips; a frozen one (SIGSTOP, a hung
// process) has its kernel complete the connect and then never sends its
// TLS ServerHello, nor answers the QUIC pool's redial, and each request
// sent to it would otherwise wait a whole dial timeout on top of the
// liveness watch's second.
func (p *Peers[C]) QUICFailed(addr string, want identity.ID, rtt time.Duration) {
	p.suspect(key{addr, want}, rtt)
}

// suspect marks the peer suspect (QUICFailed) and returns its wait; a
// known RTT (QUICFailed's) is not overridden by an unknown one.
func (p *Peers[C]) suspect(k key, rtt time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[k]
	if st == nil {
		return 0
	}
	st.lastQUIC = false
	if rtt > 0 || st.suspectWait == 0 {
		st.suspectWait = p.SuspectWait(rtt)
	}
	return st.suspectWait
}

// SuspectWait is how long a Get waits for a connection, over either
// transport, after QUIC's connection to the peer stopped answering: twice the race delay (500 ms by default,
// twice what the policy already allows a live peer's QUIC handshake),
// or 8 smoothed RTTs on a slower path (connect, TLS and the acceptance
// PING are 3 round trips).
func (p *Peers[C]) SuspectWait(rtt time.Duration) time.Duration {
	return max(2*p.cfg.RaceDelay, 8*rtt)
}

// reprobe dials QUIC to a blocked peer with back-off until it works (or
// the policy closes).
func (p *Peers[C]) reprobe(k key) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		if st := p.peers[k]; st != nil {
			st.probing = false
		}
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		st := p.peers[k]
		if st == nil || !st.blocked {
			p.mu.Unlock()
			return
		}
		wait := st.interval
		st.interval = min(2*st.interval, p.cfg.ReprobeMax)
		p.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.ProbeTimeout)
		_, err := p.quic.Get(ctx, k.addr, k.id)
		cancel()
		if p.ctx.Err() != nil {
			return
		}
		p.cfg.Observer.Reprobed(err == nil)
		if err == nil {
			p.unblock(k, "QUIC re-probe succeeded")
			return
		}
		p.cfg.Logger.Debug("QUIC re-probe failed", "peer", k.addr, "identity", k.id.String(), "error", err)
	}
}

// unblock moves a peer back to QUIC: new work goes there; the TCP
// connection drains.
func (p *Peers[C]) unblock(k key, why string) {
	p.mu.Lock()
	st := p.peers[k]
	if st == nil || !st.blocked {
		p.mu.Unlock()
		return
	}
	st.blocked, st.lastQUIC = false, true
	p.mu.Unlock()
	p.cfg.Logger.Info("peer reachable over QUIC again, moving back", "peer", k.addr, "identity", k.id.String(), "from", OverTCP, "to", OverQUIC, "why", why)
	if d, ok := any(p.tcp).(Drainer); ok {
		d.Drain(k.addr, k.id)
	}
}

// Blocked reports whether the peer is marked QUIC-blocked.
func (p *Peers[C]) Blocked(addr string, want identity.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[key{addr, want}]
	return st != nil && st.blocked
}

// Unavailable reports whether the transport the peer would use next is
// in back-off (in auto mode: or the peer itself, both transports having
// failed).
func (p *Peers[C]) Unavailable(addr string, want identity.ID) bool {
	switch {
	case p.cfg.Mode == TCP:
		return p.tcp.Unavailable(addr, want)
	case p.cfg.Mode == QUIC:
		return p.quic.Unavailable(addr, want)
	case p.down(addr, want):
		return true
	case p.Blocked(addr, want):
		return p.tcp.Unavailable(addr, want)
	}
	return p.quic.Unavailable(addr, want) && p.tcp.Unavailable(addr, want)
}

// down reports whether the peer is in the back-off after failing over
// both transports.
func (p *Peers[C]) down(addr string, want identity.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.peers[key{addr, want}]
	return st != nil && st.failures > 0 && !st.dialing && p.cfg.Now().Sub(st.failedAt) < downBackoff(st.failures)
}

// Close stops the re-probers and waits for attempts in flight; the pools
// are the caller's to close (first, so that dials in flight end).
func (p *Peers[C]) Close() {
	p.cancel()
	p.wg.Wait()
}
