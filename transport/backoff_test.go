package transport_test

import (
	"errors"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/transport"
)

// PeerBackoff, the record both pools keep per peer: a silent failure
// holds new work off for the back-off, an answer (refusal, drain) is
// probed instead, a working connection forgets it all.
func TestPeerBackoff(t *testing.T) {
	t0 := time.Unix(1000, 0)
	errDown := errors.New("down")
	tests := []struct {
		name            string
		record          func(b *transport.PeerBackoff)
		at              time.Duration // after t0
		silent, holding bool
		expired         bool
		failures        int
	}{
		{"never failed", func(b *transport.PeerBackoff) {}, 0, false, false, true, 0},
		{"silent failure, within the back-off", func(b *transport.PeerBackoff) { b.Fail(errDown, t0, false) }, transport.Backoff(1) / 2, true, true, false, 1},
		{"silent failure, back-off over", func(b *transport.PeerBackoff) { b.Fail(errDown, t0, false) }, transport.Backoff(1), true, false, false, 1},
		{"third failure in a row: a longer back-off", func(b *transport.PeerBackoff) {
			b.Fail(errDown, t0, false)
			b.Fail(errDown, t0, false)
			b.Fail(errDown, t0, false)
		}, transport.Backoff(2), true, true, false, 3},
		{"refused: probed, not held", func(b *transport.PeerBackoff) { b.Fail(errDown, t0, true) }, 0, false, true, false, 1},
		{"drain after failures keeps the count", func(b *transport.PeerBackoff) {
			b.Fail(errDown, t0, false)
			b.Fail(errDown, t0, false)
			b.Drain(errDown, t0)
		}, 0, false, true, false, 2},
		{"reset", func(b *transport.PeerBackoff) { b.Fail(errDown, t0, false); b.Reset() }, 0, false, false, true, 0},
		{"forgotten after the longest back-off", func(b *transport.PeerBackoff) { b.Fail(errDown, t0, false) }, transport.Backoff(100) + time.Millisecond, true, false, true, 1},
		{"drained, then down: remembered through the restart window", func(b *transport.PeerBackoff) {
			b.Drain(errDown, t0)
			b.Fail(errDown, t0, false)
		}, transport.Backoff(100) + time.Millisecond, true, false, false, 2},
		{"drained, then down: forgotten after the restart window", func(b *transport.PeerBackoff) {
			b.Drain(errDown, t0)
			b.Fail(errDown, t0, false)
		}, transport.RestartWindow, true, false, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b transport.PeerBackoff
			tt.record(&b)
			now := t0.Add(tt.at)
			silent, since := b.Silent(now)
			if silent != tt.silent || b.Holding(now) != tt.holding || b.Expired(now) != tt.expired || b.Failures != tt.failures {
				t.Fatalf("silent %v (since %v), holding %v, expired %v, failures %d; want %v, %v, %v, %d",
					silent, since, b.Holding(now), b.Expired(now), b.Failures, tt.silent, tt.holding, tt.expired, tt.failures)
			}
		})
	}
}
