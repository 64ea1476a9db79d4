package transport_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/transport"
)

// Silence, step by step: polls of 250 ms against a 1 s deadline. A PING
// is due from half the deadline on; the peer is dead at the deadline
// only if a PING had half of it to be answered (or if it cannot be
// PINGed); progress or a starved poll starts it over; a stall of this
// process of an eighth of the deadline or more while the answer was due
// defers the verdict to the next poll without one, but not past twice
// the deadline.
//
// The stalled cases are the false verdict seen with -race at load 25-45
// (TestStalledH2ReaderIsolated, docs/benchmarks.md): no poll late and
// no goroutine waiting a whole poll, so the watch never started over,
// while the ACK of its PING took longer than the half deadline through
// the goroutines of a starved process. Before the deferral the peer
// in "stalled while the answer was due" was dead at 1 s, a poll before
// its answer was counted.
func TestSilence(t *testing.T) {
	const poll, deadline = 250 * time.Millisecond, time.Second
	type step struct {
		mark             uint64
		starved          bool
		stall            time.Duration // this process's, in the poll's interval
		reset, due, dead bool
		deferred         bool
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
		{"stalled while the answer was due", true, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1, due: true},
			{mark: 1, due: true, stall: 130 * time.Millisecond},
			{mark: 1, due: true, deferred: true},
			{mark: 2, reset: true}, // the ACK, counted late
		}},
		{"stalled, then a clean poll confirms the silence", true, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1, due: true},
			{mark: 1, due: true},
			{mark: 1, due: true, stall: 200 * time.Millisecond, deferred: true},
			{mark: 1, due: true, stall: 100 * time.Millisecond, dead: true},
		}},
		{"stalls shorter than an eighth of the deadline", true, []step{
			{mark: 1, reset: true},
			{mark: 1, stall: 120 * time.Millisecond},
			{mark: 1, due: true, stall: 120 * time.Millisecond},
			{mark: 1, due: true, stall: 120 * time.Millisecond},
			{mark: 1, due: true, stall: 120 * time.Millisecond, dead: true},
		}},
		{"stalls before the PING was due", true, []step{
			{mark: 1, reset: true, stall: 240 * time.Millisecond},
			{mark: 1, stall: 240 * time.Millisecond},
			{mark: 1, due: true, stall: 240 * time.Millisecond},
			{mark: 1, due: true},
			{mark: 1, due: true, dead: true},
		}},
		{"stalling on: dead at twice the deadline", true, []step{
			{mark: 1, reset: true},
			{mark: 1},
			{mark: 1, due: true},
			{mark: 1, due: true, stall: 200 * time.Millisecond},
			{mark: 1, due: true, stall: 200 * time.Millisecond, deferred: true}, // 1 s
			{mark: 1, due: true, stall: 200 * time.Millisecond, deferred: true},
			{mark: 1, due: true, stall: 200 * time.Millisecond, deferred: true},
			{mark: 1, due: true, stall: 200 * time.Millisecond, deferred: true},
			{mark: 1, due: true, stall: 200 * time.Millisecond, dead: true}, // 2 s
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
				var due, dead, deferred bool
				if !reset {
					s.Stalled(st.stall)
					due = tt.pings && s.PingDue(deadline)
					dead, deferred = s.Verdict(deadline, tt.pings)
				}
				if reset != st.reset || due != st.due || dead != st.dead || deferred != st.deferred {
					t.Fatalf("poll %d (quiet %v): reset %v, PING due %v, dead %v, deferred %v; want %v, %v, %v, %v", i, s.Quiet(), reset, due, dead, deferred, st.reset, st.due, st.dead, st.deferred)
				}
			}
		})
	}
}

// VerdictBound is what Silence does at the worst a watch that is never
// starved allows: every poll an interval late (two of wall time, one
// credited), the silence seen beginning one poll after the last packet.
// Counted here by running Silence to its verdict, with no stall and
// with a stall deferring every verdict it can; for deadlines that are
// and are not whole polls (three probe timeouts of a path measured slow).
func TestVerdictBound(t *testing.T) {
	const timeout = time.Second
	poll := timeout / 4
	for _, tt := range []struct {
		deadline time.Duration
		deferred bool
		want     time.Duration // with the defaults, as documented
	}{
		{timeout, false, 2500 * time.Millisecond},
		{timeout, true, 4500 * time.Millisecond},
		{1112 * time.Millisecond, false, 0},
		{1112 * time.Millisecond, true, 0},
		{1700 * time.Millisecond, false, 0},
		{1700 * time.Millisecond, true, 0},
	} {
		t.Run(fmt.Sprintf("deadline %v deferred %v", tt.deadline, tt.deferred), func(t *testing.T) {
			var s transport.Silence
			now := time.Now()
			wall := 2 * poll // the poll that sees the last packet
			s.Observe(1, now, poll, false)
			for {
				now = now.Add(2 * poll)
				wall += 2 * poll
				if s.Observe(1, now, poll, false) {
					t.Fatal("the silence started over")
				}
				if tt.deferred {
					s.Stalled(transport.StallLimit(tt.deadline))
				}
				s.PingDue(tt.deadline)
				if dead, _ := s.Verdict(tt.deadline, true); dead {
					break
				}
				if wall > time.Minute {
					t.Fatal("never declared dead")
				}
			}
			got := transport.VerdictBound(timeout, tt.deadline, tt.deferred)
			if got != wall || tt.want != 0 && got != tt.want {
				t.Fatalf("VerdictBound = %v; Silence declared dead after %v of wall time (documented: %v, 0 for none)", got, wall, tt.want)
			}
		})
	}
}
