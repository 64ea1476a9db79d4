package transport

import "time"

// PeerBackoff is one peer's failure record in a pool (this package's and
// transport/h2tcp's): the back-off after a failed dial, a dead
// connection or a drain notice (Backoff gives the schedule). The pool's
// lock guards it.
type PeerBackoff struct {
	LastErr  error
	FailedAt time.Time
	Failures int // in a row; 0 once the peer answered
	// Answering: the last failure was the peer's own answer (it refused
	// the handshake, or announced a drain), so a probe costs one round
	// trip: the pool probes it during the back-off instead of failing
	// (Unavailable still reports it, so the balancer prefers other
	// endpoints), and finds a peer that restarted as soon as one is
	// needed.
	Answering bool
	// DrainedAt is when the peer last announced a drain, zero once a
	// connection to it works again: a peer that said goodbye is expected
	// back (a rolling restart), so the failures that follow within
	// RestartWindow (its port closed while it restarts, a refusal while
	// it finishes draining) are a restart's, not a dead peer's: it is
	// probed as if it answered (Restarting).
	DrainedAt time.Time
}

// RestartWindow is how long after a drain notice a peer counts as
// restarting rather than failed (PeerBackoff.Restarting): the drain's
// grace period (30 s by default) bounds how long the old instance may
// take to go, and a restart on the same address is expected to listen
// again soon after. Past it, the peer's failures are those of a dead
// peer again.
const RestartWindow = 30 * time.Second

// Fail records a failure at now; answering if it was the peer's answer.
func (b *PeerBackoff) Fail(err error, now time.Time, answering bool) {
	b.Failures++
	b.LastErr = err
	b.FailedAt = now
	b.Answering = answering
}

// Drain records a drain notice at now: the peer answers, but new work
// should go elsewhere for a back-off period.
func (b *PeerBackoff) Drain(err error, now time.Time) {
	b.Failures = max(b.Failures, 1)
	b.LastErr = err
	b.FailedAt = now
	b.Answering = true
	b.DrainedAt = now
}

// Reset records a working connection.
func (b *PeerBackoff) Reset() {
	b.Failures = 0
	b.LastErr = nil
	b.DrainedAt = time.Time{}
}

// Restarting reports whether the peer announced a drain within
// RestartWindow of now and no connection to it has worked since.
func (b *PeerBackoff) Restarting(now time.Time) bool {
	return !b.DrainedAt.IsZero() && now.Sub(b.DrainedAt) < RestartWindow
}

// Silent reports whether the peer's last failure was a lack of answer,
// and how long ago it was.
func (b *PeerBackoff) Silent(now time.Time) (bool, time.Duration) {
	return b.Failures > 0 && !b.Answering, now.Sub(b.FailedAt)
}

// FailsFast reports whether new work to the peer fails at once, dialing
// whether a dial to it is in flight: a peer that did not answer, during
// its back-off and while the probe that ends it is in flight, unless it
// is restarting. A peer that answered, or is restarting, is probed
// instead (one dial; others wait for it), bounded by the caller's
// context: a request that has no other endpoint to go to finds it as
// soon as it is back.
func (b *PeerBackoff) FailsFast(now time.Time, dialing bool) bool {
	silent, _ := b.Silent(now)
	return silent && !b.Restarting(now) && (dialing || b.Holding(now))
}

// Avoided reports whether the balancer should prefer other endpoints
// (Unavailable), dialing whether a dial to the peer is in flight: during
// the back-off, and while a dial probes a peer that did not answer
// (restarting or not: work that can go elsewhere does not wait for it).
func (b *PeerBackoff) Avoided(now time.Time, dialing bool) bool {
	silent, _ := b.Silent(now)
	return b.Holding(now) || silent && dialing
}

// Holding reports whether now is within the back-off after the last
// failure.
func (b *PeerBackoff) Holding(now time.Time) bool {
	return b.Failures > 0 && now.Sub(b.FailedAt) < backoff(b.Failures)
}

// Expired reports whether the record can be forgotten: no failure, or
// the longest back-off and any restart window are over.
func (b *PeerBackoff) Expired(now time.Time) bool {
	return b.Failures == 0 || now.Sub(b.FailedAt) > maxBackoff && !b.Restarting(now)
}
