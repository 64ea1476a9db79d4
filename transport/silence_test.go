package transport_test

import (
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/transport"
)

// Silence, step by step: polls of 250 ms against a 1 s deadline. A PING
// is due from half the deadline on; the peer is dead at the deadline
// only if a PING had half of it to be answered (or if it cannot be
// PINGed); progress or a starved poll starts it over.
func TestSilence(t *testing.T) {
	const poll, deadline = 250 * time.Millisecond, time.Second
	type step struct {
		mark             uint64
		starved          bool
		reset, due, dead bool
	}
	tests := []struct {
		name  string
		pings bool
		steps []step
	}{
		{"silent peer, PINGed", true, []step{
			{mark: 1, reset: true},           // first poll
			{mark: 1},                        // 250 ms
			{mark: 1, due: true},             // 500 ms: PING
			{mark: 1, due: true},             // 750 ms
			{mark: 1, due: true, dead: true}, // 1 s, PING unanswered 500 ms
		}},
		{"answer to the PING", true, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1, due: true},
			{mark: 2, reset: true}, // the ACK
			{mark: 2},
			{mark: 2, due: true},
		}},
		{"starved poll starts over", true, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1, due: true},
			{mark: 1, due: true},
			{mark: 1, starved: true, reset: true},
			{mark: 1},
		}},
		{"peer without PINGs: the deadline alone", false, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1},
			{mark: 1},
			{mark: 1, dead: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s transport.Silence
			now := time.Now()
			for i, st := range tt.steps {
				now = now.Add(poll)
				reset := s.Observe(st.mark, now, poll, st.starved)
				due := !reset && tt.pings && s.PingDue(deadline)
				dead := !reset && s.Dead(deadline, tt.pings)
				if reset != st.reset || due != st.due || dead != st.dead {
					t.Fatalf("poll %d (quiet %v): reset %v, PING due %v, dead %v; want %v, %v, %v", i, s.Quiet(), reset, due, dead, st.reset, st.due, st.dead)
				}
			}
		})
	}
}
