package testkit

import (
	"sync/atomic"
	"testing"
	"time"
)

// LastChange tells no change until the counter moves, then a time no
// earlier than the move.
func TestLastChangeNeverEarlierThanTheChange(t *testing.T) {
	var n atomic.Uint64
	last := LastChange(t, n.Load)
	if at := last(); !at.IsZero() {
		t.Fatalf("a change at %v before the counter moved", at)
	}
	moved := time.Now()
	n.Add(1)
	Eventually(t, "the change seen", func() bool { return !last().IsZero() })
	if at := last(); at.Before(moved) {
		t.Fatalf("change seen at %v, before the counter moved at %v", at, moved)
	}
	if got := Later(moved, time.Time{}); !got.Equal(moved) {
		t.Fatalf("Later(t, zero) = %v, want %v", got, moved)
	}
}

// A stopped clock stands still; resumed, it tells the time again.
func TestStoppableClock(t *testing.T) {
	var c StoppableClock
	before := time.Now()
	if now := c.Now(); now.Before(before) {
		t.Fatalf("running clock at %v, before %v", now, before)
	}
	c.Stop()
	stopped := c.Now()
	Eventually(t, "time to pass", func() bool { return time.Since(stopped) > time.Millisecond })
	if now := c.Now(); !now.Equal(stopped) {
		t.Fatalf("stopped clock moved from %v to %v", stopped, now)
	}
	c.Resume()
	if now := c.Now(); !now.After(stopped) {
		t.Fatalf("resumed clock at %v, not after %v", now, stopped)
	}
}
