package transport

import (
	"errors"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Refused and ConnectionDead say how requestError marks err, for the
// table of classify_test.go.
func Refused(err error) bool { return errors.Is(requestError(err), meshcode.ErrNotProcessed) }

func ConnectionDead(err error) bool { return errors.Is(requestError(err), meshcode.ErrConnDead) }

// SetStallHook makes p's liveness watch add stall() to the stall of this
// process each poll measured.
func SetStallHook(p *Pool, stall func() time.Duration) { p.stallHook.Store(&stall) }

// SkipBodyLook turns endedBodies' look off (true) or on, for benchmarks.
func SkipBodyLook(skip bool) { skipBodyLook.Store(skip) }

// LivenessDeadline is the deadline the liveness watch holds a peer that
// can be PINGed to, given its connection's stats.
func LivenessDeadline(l Limits, st quic.ConnectionStats) time.Duration {
	return livenessDeadline(l, st, true)
}
