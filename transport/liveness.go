package transport

import (
	"fmt"
	"log/slog"
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
// The watch can afford to be short because it looks only where a silent
// peer costs something and tells our own stalls from the peer's silence:
//
//   - it watches a connection only while requests or tunnels are
//     outstanding on it (PeerConn.Begin), so a quiet connection costs no
//     packets beyond the keep-alive;
//   - while it watches and nothing arrived for half the timeout, it sends
//     a PING (an empty DATAGRAM frame: ack-eliciting, and quic-go offers
//     no other way to make one), so a live peer always has something to
//     ACK even when its app is slow to answer;
//   - it declares the peer dead only after nothing at all (packets
//     counted by quic-go, ACKs included) arrived for the timeout (or
//     three probe timeouts if the path is slower) as counted by its
//     polls, each crediting at most one poll interval: polls that run
//     late (this process starved of CPU, the peer's packets perhaps
//     waiting unread in the socket) stretch the wait, and one late by
//     more than a whole interval starts the watch over.
//
// One goroutine per Pool polls every connection that has work.

// livenessState is the watch's view of one connection, touched only by
// the watch goroutine.
type livenessState struct {
	watching bool
	received uint64    // PacketsReceived at the last progress
	since    time.Time // last progress seen, or the watch's (re)start
	// quiet is the silence since then as the watch credits it: each
	// poll that saw no progress adds the time since the previous poll,
	// but never more than one poll interval, so a process that runs
	// its polls late (starved of CPU: the peer's packets may sit unread
	// in the socket) takes longer to declare a peer dead instead of
	// sooner.
	quiet time.Duration
	// pinged is quiet when the first PING of this silence was sent;
	// negative if none yet.
	pinged time.Duration
	// pinging: a PING is being queued (SendDatagram can block while the
	// connection's datagram queue is full; one goroutine per connection).
	pinging atomic.Bool
}

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
	timeout := p.ep.limits.LivenessTimeout
	poll := livenessPoll(timeout)
	timer := time.NewTimer(poll)
	defer timer.Stop()
	last := time.Now()
	// A poll on time is not enough to rule out starvation: in a busy
	// process the watch's goroutine may run while those that read and
	// process the peer's packets wait in the run queue, so the ACK to
	// our PING is there but not yet counted. TestLimitsUnderAbuse
	// (-race, 400 held requests and 20 MiB of oversize headers parsed at
	// once) saw a live peer declared dead after 1.16 s of "silence" with
	// every poll on time. So a goroutine that waited a whole poll
	// interval to run also counts as starvation.
	sched := schedlat.New()
	var conns []*PeerConn
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		elapsed := now.Sub(last)
		last = now
		// Late by more than a whole interval: this process did not
		// run for that long, nor perhaps did the code that reads the
		// peer's packets. Measured with -race, every core hogged and a
		// load average of 15 on 2 cores, polls late by 300-400 ms
		// went with ACKs to our PINGs arriving over a second late:
		// starting over is what keeps such a stall from looking like
		// the peer's silence (docs/design.md, "Failure detection").
		starved := elapsed-poll > poll || sched.Waited(poll)
		if starved {
			p.livenessStarved.Add(1)
			// An operator should know: detection is slower while it
			// lasts (the idle timeout remains), and so is everything else.
			p.logs.Log(p.ep.logger, slog.LevelInfo, "liveness|starved", LogStarved, "late", (elapsed - poll).Round(time.Millisecond), "poll", poll)
		}
		conns = p.watchedConns(conns[:0])
		for _, pc := range conns {
			p.checkLiveness(pc, now, min(elapsed, poll), starved)
		}
		clear(conns)
		timer.Reset(poll)
	}
}

// watchedConns appends the connections that have work outstanding.
func (p *Pool) watchedConns(dst []*PeerConn) []*PeerConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pc := range p.live {
		if pc.Conn.Context().Err() != nil {
			delete(p.live, pc) // closed while its dial was being recorded
			continue
		}
		if pc.active.Load() > 0 {
			dst = append(dst, pc)
		} else {
			pc.liveness.watching = false
		}
	}
	return dst
}

// checkLiveness looks at pc after a poll that credits the silence with
// credit, or found this process starved.
func (p *Pool) checkLiveness(pc *PeerConn, now time.Time, credit time.Duration, starved bool) {
	w := &pc.liveness
	st := pc.Conn.ConnectionStats()
	if !w.watching || starved || st.PacketsReceived != w.received {
		w.watching = true
		w.received = st.PacketsReceived
		w.since = now
		w.quiet = 0
		w.pinged = -1
		return
	}
	w.quiet += credit
	pings := pc.Conn.ConnectionState().SupportsDatagrams.Remote
	deadline := livenessDeadline(p.ep.limits, st, pings)
	if pings && w.quiet >= deadline/2 {
		// Half the deadline heard nothing: PING, and on every poll
		// after that (a lost PING is probed again by QUIC's PTO anyway,
		// but a fresh one costs nothing and does not depend on it). Not
		// sooner: a tunnel idle for hours would cost a PING and an ACK
		// every other poll.
		if w.pinged < 0 {
			w.pinged = w.quiet
		}
		if w.pinging.CompareAndSwap(false, true) {
			p.livenessPings.Add(1)
			go func() {
				defer w.pinging.Store(false)
				pc.Conn.SendDatagram(nil) // fails only once the connection is closed
			}()
		}
	}
	// Dead: silent for the deadline, and the peer had half of it to
	// answer a PING.
	if w.quiet < deadline || pings && (w.pinged < 0 || w.quiet-w.pinged < deadline/2) {
		return
	}
	p.declareDead(pc, now.Sub(w.since), deadline, st)
}

// declareDead closes pc, whose peer sent nothing for silent while work
// was outstanding: like an idle timeout, but found by the watch. The
// peer goes into back-off and is reported before the connection closes,
// so that the requests failing with it are not sent straight back to it.
func (p *Pool) declareDead(pc *PeerConn, silent, deadline time.Duration, st quic.ConnectionStats) {
	err := meshcode.Mark(fmt.Errorf("transport: peer %s (%s) sent nothing for %v with %d requests or tunnels outstanding (liveness timeout %v)",
		pc.addr, pc.peer, silent.Round(time.Millisecond), pc.active.Load(), deadline.Round(time.Millisecond)), meshcode.ErrConnDead, meshcode.ErrIdleTimeout)
	p.livenessDeclared.Add(1)
	if p.markFailed(pc, err) {
		p.ep.logger.Warn("peer stopped answering: connection closed", "peer", pc.addr, "identity", pc.peer.String(),
			"silent", silent.Round(time.Millisecond), "liveness_timeout", deadline.Round(time.Millisecond), "outstanding", pc.active.Load(),
			"rtt", st.SmoothedRTT, "packets_sent", st.PacketsSent, "packets_received", st.PacketsReceived)
		p.reportFailure(PeerFailure{Addr: pc.addr, Peer: pc.peer, Reason: ReasonUnresponsive, Err: err})
	}
	pc.Conn.CloseWithError(ConnCodeUnresponsive, "peer unresponsive")
}

// LivenessStats counts what the watch did since the pool started: how
// often it found this process starved (and started over), how many PINGs
// it sent and how many connections it declared dead.
type LivenessStats struct {
	Starved, Pings, Declared uint64
}

// LivenessStats returns the watch's counters.
func (p *Pool) LivenessStats() LivenessStats {
	return LivenessStats{Starved: p.livenessStarved.Load(), Pings: p.livenessPings.Load(), Declared: p.livenessDeclared.Load()}
}
