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
}

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
}

// Reset records a working connection.
func (b *PeerBackoff) Reset() {
	b.Failures = 0
	b.LastErr = nil
}

// Silent reports whether the peer's last failure was a lack of answer
// (new work fails at once during the back-off and while the probe that
// ends it is in flight), and how long ago it was.
func (b *PeerBackoff) Silent(now time.Time) (bool, time.Duration) {
	return b.Failures > 0 && !b.Answering, now.Sub(b.FailedAt)
}

// Holding reports whether now is within the back-off after the last
// failure.
func (b *PeerBackoff) Holding(now time.Time) bool {
	return b.Failures > 0 && now.Sub(b.FailedAt) < backoff(b.Failures)
}

// Expired reports whether the record can be forgotten: no failure, or
// the longest back-off is over.
func (b *PeerBackoff) Expired(now time.Time) bool {
	return b.Failures == 0 || now.Sub(b.FailedAt) > maxBackoff
}
