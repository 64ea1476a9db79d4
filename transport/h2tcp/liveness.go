package h2tcp

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The liveness watch over TCP: the QUIC pool's (transport/liveness.go)
// with HTTP/2 PINGs, so that transport.Limits.LivenessTimeout means the
// same on both transports. Every connection the pool dialled, busy or
// idle, is polled four times per timeout; one that received nothing for
// half the timeout is PINGed on every poll; one still silent at the
// timeout, with a PING unanswered for half of it, is declared dead: the
// connection is closed marked meshcode.ErrIdleTimeout, so Pool.watch
// puts the peer in back-off and reports it unresponsive. Each poll
// credits at most one poll interval of silence, and a poll that ran
// late, or found goroutines waiting a whole interval to run, starts the
// watch over: this process starved of CPU may leave the peer's answer
// unread in the socket. A shorter stall of this process (an eighth of
// the timeout or more) while a PING's answer was due defers the verdict
// to the next poll without one, up to twice the timeout, as over QUIC
// (transport.Silence.Verdict).
//
// x/net/http2's own health check (ReadIdleTimeout, PingTimeout) cannot
// tell that starvation from the peer's silence: set to the liveness
// timeout it closed live connections of a bulk tunnel under -race at
// load 36 (TestTunnelBulk). It stays at the idle timeout's settings
// (idleHealthCheck) as the backstop for a disabled watch.
//
// An idle connection costs one PING and its answer about every 750 ms
// with the defaults (half the timeout plus a poll). The polls' pacing
// and the silence's bookkeeping are the QUIC watch's
// (transport.LivenessPolls, transport.Silence).

// livenessState is the watch's view of one connection, touched only by
// the watch goroutine but for pinging.
type livenessState struct {
	silence transport.Silence // watchedConn.lastRead is its progress mark
	pinging atomic.Bool
}

// watchLiveness runs until the pool closes.
func (p *Pool) watchLiveness() {
	defer p.wg.Done()
	polls := transport.NewLivenessPolls(p.cfg.Limits.LivenessTimeout)
	defer polls.Stop()
	var conns []*PeerConn
	for {
		now, credit, starved, late, ok := polls.Next(p.ctx)
		if !ok {
			return
		}
		if starved {
			p.livenessStarved.Add(1)
			p.logs.Log(p.cfg.Logger, slog.LevelInfo, "liveness|starved", transport.LogStarved, "transport", "tcp", "late", late.Round(time.Millisecond), "poll", polls.Poll())
		}
		stall := polls.Stall()
		if hook := p.stallHook.Load(); hook != nil {
			stall = max(stall, (*hook)())
		}
		p.mu.Lock()
		for pc := range p.all {
			if pc.conn.ctx.Err() == nil {
				conns = append(conns, pc)
			}
		}
		p.mu.Unlock()
		for _, pc := range conns {
			p.checkLiveness(pc, now, credit, stall, starved)
		}
		clear(conns)
		conns = conns[:0]
	}
}

// checkLiveness looks at pc after a poll that credits the silence with
// credit and found this process stalled for stall, or starved.
func (p *Pool) checkLiveness(pc *PeerConn, now time.Time, credit, stall time.Duration, starved bool) {
	w := &pc.liveness
	timeout := p.cfg.Limits.LivenessTimeout
	if w.silence.Observe(uint64(pc.conn.lastRead.Load()), now, credit, starved) {
		return
	}
	w.silence.Stalled(stall)
	if w.silence.PingDue(timeout) && w.pinging.CompareAndSwap(false, true) {
		p.livenessPings.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer w.pinging.Store(false)
			// The answer shows as a read; a failure, as the
			// connection's end.
			ctx, cancel := context.WithTimeout(p.ctx, timeout)
			defer cancel()
			pc.cc.Ping(ctx)
		}()
	}
	// Dead: silent for the timeout, and the peer had half of it to
	// answer a PING, unless this process stalled meanwhile (then the
	// next poll confirms it).
	dead, deferred := w.silence.Verdict(timeout, true)
	if deferred {
		p.livenessDeferred.Add(1)
	}
	if !dead {
		return
	}
	err := meshcode.Mark(fmt.Errorf("h2tcp: peer %s (%s) sent nothing for %v with %d requests or tunnels outstanding (liveness timeout %v)",
		pc.addr, pc.peer, now.Sub(w.silence.Since()).Round(time.Millisecond), pc.active.Load(), timeout), meshcode.ErrIdleTimeout, meshcode.ErrConnDead)
	pc.conn.ended(err)
	pc.cc.Close()
}
