// Package schedlat tells whether this process's goroutines waited long to
// run, from the runtime's scheduling-latency histogram
// (/sched/latencies:seconds, which the runtime samples anyway, so it is
// cheap to read). The liveness watch uses it to tell its own starvation
// from a peer's silence; tests use it to set aside measurements taken
// while the machine starved them.
package schedlat

import (
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
	metrics.Read(w.sample)
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return false
	}
	h := w.sample[0].Value.Float64Histogram()
	if len(w.prev) != len(h.Counts) {
		w.prev = make([]uint64, len(h.Counts))
	}
	var late uint64
	for i, c := range h.Counts {
		// Counts[i] is for [Buckets[i], Buckets[i+1]): count a bucket
		// only when all of it is at least limit.
		if h.Buckets[i] >= limit.Seconds() {
			late += c - w.prev[i]
		}
		w.prev[i] = c
	}
	return limit > 0 && late > 0
}
