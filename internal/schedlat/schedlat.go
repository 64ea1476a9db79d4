// Package schedlat tells whether this process's goroutines waited long to
// run, from the runtime's scheduling-latency histogram
// (/sched/latencies:seconds, which the runtime samples anyway, so it is
// cheap to read). The liveness watch uses it to tell its own starvation
// from a peer's silence; tests use it to set aside measurements taken
// while the machine starved them.
package schedlat

import (
	"math"
	"runtime/metrics"
	"time"
)

const name = "/sched/latencies:seconds"

// Watch counts the goroutines that waited long between two calls of
// Waited. It is not safe for concurrent use.
type Watch struct {
	sample []metrics.Sample
	prev   []uint64
}

// New starts watching from now.
func New() *Watch {
	w := &Watch{sample: []metrics.Sample{{Name: name}}}
	w.Waited(0) // the baseline
	return w
}

// Waited reports whether a goroutine waited runnable for at least limit
// since the previous call (or New), and starts a new interval. A runtime
// without the histogram never reports a wait; limit 0 only resets.
func (w *Watch) Waited(limit time.Duration) bool {
	// A bucket counts only when all of it is at least limit.
	return w.longest() >= limit.Seconds() && limit > 0
}

// Longest is the longest a goroutine waited runnable since the previous
// call (or New), to the histogram's resolution (the lower bound of the
// highest bucket that grew: a wait of at least this long happened), and
// starts a new interval. 0 if no goroutine waited, or the runtime has no
// histogram.
func (w *Watch) Longest() time.Duration {
	l := w.longest()
	if l >= math.MaxInt64/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(math.Round(l * float64(time.Second)))
}

// longest is Longest in seconds, 0 for none.
func (w *Watch) longest() float64 {
	metrics.Read(w.sample)
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.sample[0].Value.Float64Histogram()
	if len(w.prev) != len(h.Counts) {
		w.prev = make([]uint64, len(h.Counts))
	}
	var longest float64
	for i, c := range h.Counts {
		// Counts[i] is for [Buckets[i], Buckets[i+1]).
		if c != w.prev[i] && h.Buckets[i] > longest {
			longest = h.Buckets[i]
		}
		w.prev[i] = c
	}
	return longest
}
