package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram is a log-linear latency histogram with microsecond resolution.
//
// Values from 0 to 127µs are kept exactly; above that every power-of-two
// range [2^e, 2^(e+1)) is split into 128 equal buckets, so a bucket is at
// most 1/128 of its lower bound wide and the midpoint reported for it is
// within 0.4% of any value in it. Values are tracked up to [HistogramMax]
// (60 s); larger values are counted in the top bucket, while Max stays
// exact.
//
// The zero value is an empty histogram ready to use. A Histogram is not
// safe for concurrent use: give each worker its own and [Histogram.Merge]
// them afterwards, which keeps locks off the hot path.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    uint64 // µs
	min    uint64
	max    uint64
}

const (
	histSubBits  = 7
	histSub      = 1 << histSubBits // linear buckets per power of two
	histMaxExp   = 25               // 2^25µs ≈ 33.5s ≤ 60s < 2^26µs
	histBuckets  = (histMaxExp - histSubBits + 2) * histSub
	histMaxValue = uint64(60 * time.Second / time.Microsecond)
)

// HistogramMax is the largest latency a Histogram distinguishes.
const HistogramMax = 60 * time.Second

func bucketOf(us uint64) int {
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - 1 // us in [2^e, 2^(e+1)), e >= histSubBits
	shift := e - histSubBits
	return (e-histSubBits+1)*histSub + int(us>>shift) - histSub
}

// bucketRange returns the smallest and largest value mapping to bucket i.
func bucketRange(i int) (lo, hi uint64) {
	if i < histSub {
		return uint64(i), uint64(i)
	}
	block, sub := i/histSub, i%histSub
	shift := block - 1
	lo = uint64(histSub+sub) << shift
	return lo, lo + (1 << shift) - 1
}

// Record adds one latency, rounded to the nearest microsecond; negative
// durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.RecordMicros(uint64((d + 500*time.Nanosecond) / time.Microsecond))
}

// RecordMicros adds one value in microseconds.
func (h *Histogram) RecordMicros(us uint64) {
	if h.n == 0 || us < h.min {
		h.min = us
	}
	if us > h.max {
		h.max = us
	}
	h.n++
	h.sum += us
	v := us
	if v > histMaxValue {
		v = histMaxValue
	}
	h.counts[bucketOf(v)]++
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Min returns the smallest recorded value in µs (0 if empty).
func (h *Histogram) Min() uint64 { return h.min }

// Max returns the largest recorded value in µs, exactly (0 if empty).
func (h *Histogram) Max() uint64 { return h.max }

// Mean returns the exact mean in µs (0 if empty).
func (h *Histogram) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return float64(h.sum) / float64(h.n)
}

// Quantile returns the value in µs at quantile q in [0, 1]: an estimate,
// within 0.4%, of the ceil(q·n)-th smallest recorded value (the smallest
// for q = 0). The result never lies outside [Min, Max]. It returns 0 for an
// empty histogram.
func (h *Histogram) Quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 || math.IsNaN(q) {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			lo, hi := bucketRange(i)
			v := lo + (hi-lo)/2
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}
