package testkit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// LastChange samples count every few milliseconds until the test ends
// and returns a function telling when it was last seen to change (the
// zero time if not yet). The time is no earlier than the change: a
// bound counted from it is no tighter than one counted from the change
// itself. The liveness tests count their bound from the watch's last
// start-over (LivenessStats.Starved) with it.
func LastChange(t testing.TB, count func() uint64) func() time.Time {
	var last atomic.Pointer[time.Time]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	seen := count()
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if n := count(); n != seen {
				seen = n
				now := time.Now()
				last.Store(&now)
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })
	return func() time.Time {
		if at := last.Load(); at != nil {
			return *at
		}
		return time.Time{}
	}
}

// Later is the later of a and b.
func Later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// StoppableClock is a clock for back-off (transport.Config.Now,
// h2tcp.Config.Now): the time, except while stopped, when it stands at
// the instant Stop was called. A test that asserts "in back-off" with
// it stopped does not depend on how long this process took to look
// (the first back-off is 100 ms; a loaded machine can take longer).
type StoppableClock struct{ at atomic.Pointer[time.Time] }

// Now is the time, or the instant Stop was called while stopped.
func (c *StoppableClock) Now() time.Time {
	if at := c.at.Load(); at != nil {
		return *at
	}
	return time.Now()
}

// Stop makes the clock stand at now.
func (c *StoppableClock) Stop() {
	now := time.Now()
	c.at.Store(&now)
}

// Resume makes the clock tell the time again.
func (c *StoppableClock) Resume() { c.at.Store(nil) }
