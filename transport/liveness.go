package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/internal/schedlat"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The liveness watch: the dialling side's fast failure detection
// (Limits.LivenessTimeout; docs/design.md, "Failure detection"). The
// QUIC idle timeout is symmetric and blind to why nothing arrived, so it
// must stay long enough that a node's CPU stalls never reach it (5 s).
// The watch can afford to be short because it asks the peer for an
// answer before it gives up and tells our own stalls from the peer's
// silence:
//
//   - it watches every connection it dialled, busy or idle, so a
//     request never waits on a connection whose peer died silently
//     while it was quiet; its PINGs replace QUIC's keep-alive there
//     (one PING and one ACK about every 750 ms with the defaults);
//   - a busy connection silent for a whole poll, or an idle one whose
//     PING went unanswered for one, is probed for ICMP port unreachable
//     (unreachable.go): a peer whose process is gone is declared dead
//     within a round trip of that;
//   - when nothing arrived for half the timeout, it sends
//     a PING (an empty DATAGRAM frame: ack-eliciting, and quic-go offers
//     no other way to make one), so a live peer always has something to
//     ACK even when its app is slow to answer;
//   - it declares the peer dead only after nothing at all (packets
//     counted by quic-go, ACKs included) arrived for the timeout (or
//     three probe timeouts if the path is slower) as counted by its
//     polls, each crediting at most one poll interval: polls that run
//     late (this process starved of CPU, the peer's packets perhaps
//     waiting unread in the socket) stretch the wait, and one late by
//     more than a whole interval starts the watch over;
//   - and if this process stalled for an eighth of the timeout or more
//     (a poll that late, or a goroutine waiting that long to run) while
//     the PING's answer was due, it confirms the silence first: the
//     verdict waits for a poll without such a stall, up to twice the
//     timeout (Silence.Verdict), since the answer may be waiting in
//     this process's run queues.
//
// One goroutine per Pool polls every connection.

// livenessState is the watch's view of one connection, touched only by
// the watch goroutine but for the atomics.
type livenessState struct {
	silence Silence // PacketsReceived is its progress mark
	// pinging: a PING is being queued (SendDatagram can block while the
	// connection's datagram queue is full; one goroutine per connection).
	pinging atomic.Bool
	// probed: a port-unreachable probe was sent during this silence;
	// probing: one is in flight (its goroutine owns it).
	probed  bool
	probing atomic.Bool
}

// Silence is one connection's silence as a liveness watch credits it
// (this package's and transport/h2tcp's), touched only by the watch.
type Silence struct {
	watching bool
	mark     uint64    // the connection's progress mark at the last progress
	since    time.Time // last progress seen, or the watch's (re)start
	// quiet is the silence since then as the watch credits it: each
	// poll that saw no progress adds the time since the previous poll,
	// but never more than one poll interval, so a process that runs
	// its polls late (starved of CPU: the peer's packets may sit unread
	// in the socket) takes longer to declare a peer dead instead of
	// sooner.
	quiet time.Duration
	// pinged is quiet when the first PING of this silence was due;
	// negative if none yet.
	pinged time.Duration
	// stall is the longest this process was stalled (Stalled) in the
	// polls since the PING was due, or since the verdict was last
	// deferred: the window the peer's answer had to reach us in.
	stall time.Duration
}

// Observe records a poll that found the connection's progress mark at
// mark (packets or bytes received) and credits credit of silence; it
// reports whether the silence started over (progress, a poll that found
// this process starved, or the first poll).
func (s *Silence) Observe(mark uint64, now time.Time, credit time.Duration, starved bool) bool {
	if !s.watching || starved || mark != s.mark {
		*s = Silence{watching: true, mark: mark, since: now, pinged: -1}
		return true
	}
	s.quiet += credit
	return false
}

// Stalled records that this process stalled for d (a goroutine waited
// that long to run, or the poll ran that late) in the interval the poll
// just Observed credits: once a PING is due, the longest such stall of
// its answer's window can defer the verdict (Verdict).
func (s *Silence) Stalled(d time.Duration) {
	if s.pinged >= 0 {
		s.stall = max(s.stall, d)
	}
}

// Quiet is the silence credited so far; Since when it began.
func (s *Silence) Quiet() time.Duration { return s.quiet }
func (s *Silence) Since() time.Time     { return s.since }

// PingDue reports whether half the deadline passed in silence: time to
// PING, on this poll and every one after it.
func (s *Silence) PingDue(deadline time.Duration) bool {
	if s.quiet < deadline/2 {
		return false
	}
	if s.pinged < 0 {
		s.pinged = s.quiet
	}
	return true
}

// PingUnanswered reports whether a PING has been due for at least d.
func (s *Silence) PingUnanswered(d time.Duration) bool { return s.pinged >= 0 && s.quiet-s.pinged >= d }

// Dead reports whether the peer was silent for the deadline and, if it
// could be PINGed, had half of it to answer one (Verdict, without the
// deferral's count).
func (s *Silence) Dead(deadline time.Duration, pings bool) bool {
	dead, _ := s.Verdict(deadline, pings)
	return dead
}

// Verdict reports whether the peer was silent for the deadline and, if
// it could be PINGed, had half of it to answer one; deferred if it
// would have been dead but this process stalled (Stalled) while the
// answer was due for at least StallLimit(deadline): the answer's path
// from the peer's socket to our count crosses several goroutines of
// this process (four hand-offs of our own, more with the peer in the
// same process), and four waits that long fill the half deadline the
// PING had, although none was long enough (a whole poll) to start the
// watch over. A deferred verdict is taken again at the next poll,
// whose PING and interval confirm the silence if no stall that long
// came meanwhile; never past twice the deadline, which bounds how long
// a dead peer stays undetected on a process that keeps stalling.
func (s *Silence) Verdict(deadline time.Duration, pings bool) (dead, deferred bool) {
	if s.quiet < deadline || pings && !s.PingUnanswered(deadline/2) {
		return false, false
	}
	if pings && s.stall >= StallLimit(deadline) && s.quiet < 2*deadline {
		s.stall = 0
		return false, true
	}
	return true, false
}

// StallLimit is the stall of this process, while a PING's answer is
// due, that defers the verdict on a silent peer (Silence.Verdict): an
// eighth of the deadline, 125 ms with the defaults.
func StallLimit(deadline time.Duration) time.Duration { return deadline / 8 }

// VerdictBound is the latest, in wall time after a peer fell silent,
// that a watch with timeout declares it dead, holding it to deadline
// (the timeout, or longer on a slow path: livenessDeadline) and PINGing
// it, on a process it never found starved (LivenessStats.Starved; a
// watch that did started over, and the bound counts from then). Each
// poll credits the silence with one interval and may run at most one
// interval late (later, it finds the process starved), so a credited
// interval takes at most two of wall time; the poll that sees the
// silence begin is one more. The verdict needs the deadline credited and
// a PING (sent once half of it is credited) unanswered for half of it,
// both in whole polls, or twice the deadline once a verdict was
// deferred (Silence.Verdict). With the defaults 2.5 s, 4.5 s if
// deferred.
func VerdictBound(timeout, deadline time.Duration, deferred bool) time.Duration {
	poll := livenessPoll(timeout)
	polls := func(d time.Duration) time.Duration { return (d + poll - 1) / poll }
	n := max(polls(deadline), 2*polls(deadline/2))
	if deferred {
		n = max(n, polls(2*deadline))
	}
	return 2 * poll * (1 + n)
}

// LivenessPolls paces a liveness watch: a poll every quarter of the
// timeout, telling each whether this process was starved.
type LivenessPolls struct {
	poll   time.Duration
	timer  *time.Timer
	last   time.Time
	sched  *schedlat.Watch
	polled bool // Next returned a poll: the timer is re-armed at the next call
	stall  time.Duration
}

// NewLivenessPolls starts pacing polls for timeout; Stop it when done.
func NewLivenessPolls(timeout time.Duration) *LivenessPolls {
	poll := livenessPoll(timeout)
	// A poll on time is not enough to rule out starvation: in a busy
	// process the watch's goroutine may run while those that read and
	// process the peer's packets wait in the run queue, so the ACK to
	// our PING is there but not yet counted. TestLimitsUnderAbuse
	// (-race, 400 held requests and 20 MiB of oversize headers parsed at
	// once) saw a live peer declared dead after 1.16 s of "silence" with
	// every poll on time. So a goroutine that waited a whole poll
	// interval to run also counts as starvation.
	return &LivenessPolls{poll: poll, timer: time.NewTimer(poll), last: time.Now(), sched: schedlat.New()}
}

// Poll is the interval between polls.
func (w *LivenessPolls) Poll() time.Duration { return w.poll }

// Stop releases the timer.
func (w *LivenessPolls) Stop() { w.timer.Stop() }

// Next waits for the next poll (false once ctx ends) and returns its
// time, the silence it credits a quiet connection with (the time since
// the previous poll, at most one interval), whether this process was
// starved (every connection's watch starts over) and how late it ran.
//
// The timer is re-armed when Next is called again, after the caller
// looked at its connections: time spent looking counts as lateness, so a
// process too slow to get through its connections counts as starved.
func (w *LivenessPolls) Next(ctx context.Context) (now time.Time, credit time.Duration, starved bool, late time.Duration, ok bool) {
	if w.polled {
		w.timer.Reset(w.poll)
	}
	select {
	case <-ctx.Done():
		return now, 0, false, 0, false
	case <-w.timer.C:
	}
	w.polled = true
	now = time.Now()
	elapsed := now.Sub(w.last)
	w.last = now
	// Late by more than a whole interval: this process did not run for
	// that long, nor perhaps did the code that reads the peer's packets.
	// Measured with -race, every core hogged and a load average of 15 on
	// 2 cores, polls late by 300-400 ms went with ACKs to our PINGs
	// arriving over a second late: starting over is what keeps such a
	// stall from looking like the peer's silence (docs/design.md,
	// "Failure detection").
	late = elapsed - w.poll
	longest := w.sched.Longest()
	w.stall = max(late, longest)
	starved = late > w.poll || longest >= w.poll
	return now, min(elapsed, w.poll), starved, late, true
}

// Stall is how long this process stalled in the interval of the poll
// Next last returned: how late the poll ran, or the longest a goroutine
// waited to run meanwhile if longer (Silence.Stalled).
func (w *LivenessPolls) Stall() time.Duration { return w.stall }

// LogStarved is the message logged (rate-limited) when the watch finds
// this process starved and starts over.
const LogStarved = "liveness watch started over: this process did not run for a while"

// livenessPoll is how often the watch looks at connections with work.
func livenessPoll(timeout time.Duration) time.Duration {
	return max(timeout/4, 10*time.Millisecond)
}

// maxAckDelay is what the peer may wait before acknowledging (quic-go's
// default max_ack_delay, which the peer does not tell the application).
const maxAckDelay = 25 * time.Millisecond

// deadline is how long the peer may be silent while work is outstanding:
// the timeout, or three probe timeouts (RFC 9002: smoothed RTT plus four
// mean deviations plus the ACK delay) on a path whose RTT makes that
// longer, as quic-go stretches its idle timeout. A peer that cannot
// receive our PINGs (no DATAGRAM support) answers only the keep-alive
// PING, sent after KeepAlive of silence.
func livenessDeadline(l Limits, st quic.ConnectionStats, pings bool) time.Duration {
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond) + maxAckDelay
	d := max(l.LivenessTimeout, 3*pto)
	if !pings {
		d += l.KeepAlive
	}
	return d
}

// watchLiveness runs until the pool closes.
func (p *Pool) watchLiveness() {
	defer p.dialsWG.Done()
	polls := NewLivenessPolls(p.ep.limits.LivenessTimeout)
	defer polls.Stop()
	var conns []*PeerConn
	for {
		now, credit, starved, late, ok := polls.Next(p.ctx)
		if !ok {
			return
		}
		if starved {
			p.livenessStarved.Add(1)
			// An operator should know: detection is slower while it
			// lasts (the idle timeout remains), and so is everything else.
			p.logs.Log(p.ep.logger, slog.LevelInfo, "liveness|starved", LogStarved, "late", late.Round(time.Millisecond), "poll", polls.Poll())
		}
		stall := polls.Stall()
		if hook := p.stallHook.Load(); hook != nil {
			stall = max(stall, (*hook)())
		}
		conns = p.watchedConns(conns[:0])
		for _, pc := range conns {
			p.checkLiveness(pc, now, credit, stall, starved)
		}
		clear(conns)
	}
}

// watchedConns appends every open connection: busy ones (requests or
// tunnels outstanding) so that their work fails fast, idle ones so that
// the next request does not find out a peer died silently meanwhile.
func (p *Pool) watchedConns(dst []*PeerConn) []*PeerConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pc := range p.live {
		if pc.Conn.Context().Err() != nil {
			delete(p.live, pc) // closed while its dial was being recorded
			continue
		}
		dst = append(dst, pc)
	}
	return dst
}

// checkLiveness looks at pc after a poll that credits the silence with
// credit and found this process stalled for stall, or starved. The
// silence is counted across idle and busy periods alike: a request that
// starts on a connection already silent for a while fails at the
// deadline counted from the last packet heard, not from its own start.
func (p *Pool) checkLiveness(pc *PeerConn, now time.Time, credit, stall time.Duration, starved bool) {
	w := &pc.liveness
	st := pc.Conn.ConnectionStats()
	if w.silence.Observe(st.PacketsReceived, now, credit, starved) {
		w.probed = false
		return
	}
	w.silence.Stalled(stall)
	busy := pc.active.Load() > 0
	// Ask the peer's host whether anything still listens on its port
	// (unreachable.go): a process that is gone is then declared dead
	// within a round trip instead of after the deadline. Once per
	// silence: a slow app keeps a live connection quiet for long. On a
	// busy connection after one poll without a packet; on an idle one,
	// whose silences are the norm, once a PING went unanswered for a
	// poll.
	if !w.probed && (busy || w.silence.PingUnanswered(livenessPoll(p.ep.limits.LivenessTimeout))) {
		w.probed = true
		p.probeConn(pc, livenessDeadline(p.ep.limits, st, true)/2)
	}
	pings := pc.datagrams
	deadline := livenessDeadline(p.ep.limits, st, pings)
	if pings && w.silence.PingDue(deadline) {
		// Half the deadline heard nothing: PING, and on every poll
		// after that (a lost PING is probed again by QUIC's PTO anyway,
		// but a fresh one costs nothing and does not depend on it). Not
		// sooner: an idle connection (or a tunnel idle for hours) costs
		// one PING and its ACK per half deadline plus a poll (750 ms
		// with the defaults), which replaces QUIC's own keep-alive
		// (due only after KeepAlive of silence, 1.25 s).
		if w.pinging.CompareAndSwap(false, true) {
			p.livenessPings.Add(1)
			go func() {
				defer w.pinging.Store(false)
				pc.Conn.SendDatagram(nil) // fails only once the connection is closed
			}()
		}
	}
	// Dead: silent for the deadline, and the peer had half of it to
	// answer a PING, unless this process stalled meanwhile (then the
	// next poll confirms it).
	dead, deferred := w.silence.Verdict(deadline, pings)
	if deferred {
		p.livenessDeferred.Add(1)
	}
	if !dead {
		return
	}
	silent := now.Sub(w.silence.Since())
	p.declareDead(pc, ReasonUnresponsive, fmt.Errorf("transport: peer %s (%s) sent nothing for %v with %d requests or tunnels outstanding (liveness timeout %v)",
		pc.addr, pc.peer, silent.Round(time.Millisecond), pc.active.Load(), deadline.Round(time.Millisecond)), "silent for "+silent.Round(time.Millisecond).String(), deadline, st)
}

// probeConn starts a port-unreachable probe of pc's peer that waits up
// to wait for the answer, unless the endpoint cannot probe or the peer
// is behind a gateway (unreachable.go). A peer found gone is declared
// dead at once.
func (p *Pool) probeConn(pc *PeerConn, wait time.Duration) {
	if !p.ep.probe || pc.viaGateway {
		return
	}
	addr, ok := pc.Conn.RemoteAddr().(*net.UDPAddr)
	if !ok || !pc.liveness.probing.CompareAndSwap(false, true) {
		return
	}
	p.livenessProbes.Add(1)
	p.dialsWG.Add(1)
	go func() {
		defer p.dialsWG.Done()
		defer pc.liveness.probing.Store(false)
		if !probeUnreachable(pc.Conn.Context(), addr, wait) {
			return
		}
		st := pc.Conn.ConnectionStats()
		p.declareDead(pc, ReasonUnreachable, fmt.Errorf("transport: peer %s (%s) is gone with %d requests or tunnels outstanding: %w",
			pc.addr, pc.peer, pc.active.Load(), errPortUnreachable), "port unreachable", 0, st)
	}()
}

// declareDead closes pc, whose peer sent nothing for silent while work
// was outstanding (reason ReasonUnresponsive) or whose host said nothing
// listens on its port (ReasonUnreachable): like an idle timeout, but
// found by the watch. The peer goes into back-off and is reported before
// the connection closes, so that the requests failing with it are not
// sent straight back to it. Only the first call for a connection counts.
func (p *Pool) declareDead(pc *PeerConn, reason string, cause error, why string, deadline time.Duration, st quic.ConnectionStats) {
	if !pc.declared.CompareAndSwap(false, true) {
		return
	}
	err := meshcode.Mark(cause, meshcode.ErrConnDead, meshcode.ErrIdleTimeout)
	p.livenessDeclared.Add(1)
	if reason == ReasonUnreachable {
		p.livenessUnreachable.Add(1)
	}
	if p.markFailed(pc, err) {
		p.ep.logger.Warn("peer stopped answering: connection closed", "peer", pc.addr, "identity", pc.peer.String(), "reason", reason,
			"why", why, "liveness_timeout", deadline.Round(time.Millisecond), "outstanding", pc.active.Load(),
			"rtt", st.SmoothedRTT, "packets_sent", st.PacketsSent, "packets_received", st.PacketsReceived)
		p.reportFailure(PeerFailure{Addr: pc.addr, Peer: pc.peer, Reason: reason, Err: err})
	}
	pc.Conn.CloseWithError(ConnCodeUnresponsive, "peer unresponsive")
}

// LivenessStats counts what the watch did since the pool started: how
// often it found this process starved (and started over), how many PINGs
// and port-unreachable probes it sent, how many connections it declared
// dead, and of those how many because their peer's port was unreachable,
// and how often it deferred a verdict by a poll because this process
// stalled while a PING's answer was due (Silence.Verdict).
type LivenessStats struct {
	Starved, Pings, Probes, Declared, Unreachable, Deferred uint64
}

// LivenessStats returns the watch's counters.
func (p *Pool) LivenessStats() LivenessStats {
	return LivenessStats{
		Starved:     p.livenessStarved.Load(),
		Pings:       p.livenessPings.Load(),
		Probes:      p.livenessProbes.Load(),
		Declared:    p.livenessDeclared.Load(),
		Unreachable: p.livenessUnreachable.Load(),
		Deferred:    p.livenessDeferred.Load(),
	}
}
