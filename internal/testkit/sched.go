package testkit

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/internal/schedlat"
)

// SchedWatch tells whether this process was starved of CPU between two
// calls: whether any goroutine waited runnable for at least a given time
// before it ran, by the runtime's scheduling-latency histogram (sampled
// by the runtime, so cheap to keep), or a goroutine of its own that
// wakes every millisecond went that long without running. The histogram
// sees waits in Go's run queue only: a goroutine whose thread the OS does
// not run, or one woken by the network poller while no thread polls,
// does not show there (a flood test had 100-200 ms requests in windows
// the histogram called clean). On a 2-core machine shared with
// other jobs a thread can wait 100 ms for a core; a latency measured
// across such a wait says nothing about the code under test. Tests that
// bound a real timing property keep the bound and measure it only over
// intervals SchedWatch calls clean (skip and redo the others), comparing
// how often each side of a comparison was starved so that starvation the
// code under test causes is not hidden.
type SchedWatch struct {
	mu     sync.Mutex
	lat    *schedlat.Watch
	maxGap atomic.Int64 // longest time between two wake-ups, ns
	lost   atomic.Int64 // time past due at the wake-ups, summed, ns
	stop   chan struct{}
	done   chan struct{}
}

// NewSchedWatch starts watching from now. Stop it when done.
func NewSchedWatch() *SchedWatch {
	w := &SchedWatch{lat: schedlat.New(), stop: make(chan struct{}), done: make(chan struct{})}
	go w.wake()
	return w
}

// wake runs every millisecond and records the longest time between two
// of its runs, and how long past due its runs were in all (a run past
// due is one the process wanted to make and could not: its time lost).
func (w *SchedWatch) wake() {
	defer close(w.done)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-w.stop:
			return
		case <-tick.C:
		}
		now := time.Now() // when it ran, not when the tick was due
		gap := int64(now.Sub(last))
		last = now
		if late := gap - int64(time.Millisecond); late > 0 {
			w.lost.Add(late)
		}
		for m := w.maxGap.Load(); gap > m && !w.maxGap.CompareAndSwap(m, gap); m = w.maxGap.Load() {
		}
	}
}

// Stop ends the watch's goroutine.
func (w *SchedWatch) Stop() {
	close(w.stop)
	<-w.done
}

// Starved reports whether a goroutine waited runnable for at least limit
// since the previous call (or NewSchedWatch), and starts a new interval.
// A runtime without the histogram never reports starvation.
func (w *SchedWatch) Starved(limit time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	late := w.lat.Waited(limit)
	gap := time.Duration(w.maxGap.Swap(0))
	w.lost.Store(0)
	return limit > 0 && (late || gap >= limit)
}

// Lost is how long, in all, the watch's own goroutine waited to run
// past its 1 ms ticks since the previous Starved call (or
// NewSchedWatch): the wall time in which this process could not run
// even a goroutine that only wakes up. On an oversubscribed machine
// most of it is made of many short waits, none of them long enough for
// Starved: a step with many hand-offs between goroutines (a handshake
// through a relay) then takes longer by about this much although no
// single wait was long. It does not reset the interval.
func (w *SchedWatch) Lost() time.Duration {
	return time.Duration(w.lost.Load())
}
