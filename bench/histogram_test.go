package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// logUniform returns n values spread log-uniformly over 1µs..60s.
func logUniform(rng *rand.Rand, n int) []uint64 {
	vs := make([]uint64, n)
	for i := range vs {
		vs[i] = uint64(math.Exp(rng.Float64() * math.Log(60e6)))
	}
	return vs
}

func reference(sorted []uint64, q float64) uint64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

func relErr(got, want uint64) float64 {
	if want == 0 {
		return math.Abs(float64(got))
	}
	return math.Abs(float64(got)-float64(want)) / float64(want)
}

var quantiles = []float64{0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1}

func TestHistogramQuantilesAgainstSorted(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, data := range [][]uint64{
		logUniform(rng, 200_000),
		// A realistic latency shape: mostly ~200µs with a long tail.
		func() []uint64 {
			vs := make([]uint64, 100_000)
			for i := range vs {
				vs[i] = uint64(150 + rng.ExpFloat64()*80)
				if rng.IntN(1000) == 0 {
					vs[i] = uint64(10_000 + rng.IntN(2_000_000))
				}
			}
			return vs
		}(),
		{5}, {0, 1, 2, 3}, {60_000_000, 1},
	} {
		var h Histogram
		for _, v := range data {
			h.RecordMicros(v)
		}
		sorted := slices.Clone(data)
		slices.Sort(sorted)
		for _, q := range quantiles {
			got, want := h.Quantile(q), reference(sorted, q)
			if e := relErr(got, want); e > 0.01 {
				t.Errorf("n=%d q=%v: got %d, want %d (error %.4f)", len(data), q, got, want, e)
			}
		}
		if h.Max() != sorted[len(sorted)-1] || h.Min() != sorted[0] {
			t.Errorf("min/max = %d/%d, want %d/%d", h.Min(), h.Max(), sorted[0], sorted[len(sorted)-1])
		}
		var sum float64
		for _, v := range data {
			sum += float64(v)
		}
		if m := sum / float64(len(data)); math.Abs(h.Mean()-m) > 1e-6*m {
			t.Errorf("mean = %v, want %v", h.Mean(), m)
		}
		if h.Count() != uint64(len(data)) {
			t.Errorf("count = %d", h.Count())
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	check := func(v uint64) {
		i := bucketOf(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("value %d: bucket %d out of range", v, i)
		}
		lo, hi := bucketRange(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d [%d, %d]", v, i, lo, hi)
		}
		mid := lo + (hi-lo)/2
		if relErr(mid, v) > 1.0/256+1e-12 {
			t.Fatalf("value %d: midpoint %d too far", v, mid)
		}
	}
	for v := uint64(0); v < 1<<18; v++ {
		check(v)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		check(rng.Uint64N(histMaxValue + 1))
	}
	check(histMaxValue)
	// Consecutive buckets tile the range without gaps.
	for i := 1; i < histBuckets; i++ {
		_, prevHi := bucketRange(i - 1)
		lo, _ := bucketRange(i)
		if lo != prevHi+1 {
			t.Fatalf("gap between bucket %d and %d", i-1, i)
		}
	}
}

func TestHistogramMergeAndMax(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	data := logUniform(rng, 50_000)
	var all Histogram
	parts := make([]Histogram, 8)
	for i, v := range data {
		all.RecordMicros(v)
		parts[i%len(parts)].RecordMicros(v)
	}
	var merged Histogram
	merged.Merge(&Histogram{}) // merging an empty one is a no-op
	for i := range parts {
		merged.Merge(&parts[i])
	}
	if merged != all {
		t.Fatal("merged histogram differs from the histogram of all values")
	}
	for _, q := range quantiles {
		if merged.Quantile(q) != all.Quantile(q) {
			t.Errorf("q=%v differs", q)
		}
	}

	// Beyond 60s values land in the top bucket but Max stays exact.
	var h Histogram
	h.Record(90 * time.Second)
	h.Record(time.Millisecond)
	if h.Max() != 90_000_000 {
		t.Errorf("max = %d", h.Max())
	}
	if q := h.Quantile(1); q != 90_000_000 && relErr(q, 60_000_000) > 0.01 {
		t.Errorf("p100 = %d", q)
	}
	if relErr(h.Quantile(0.5), 1000) > 0.01 {
		t.Errorf("p50 = %d", h.Quantile(0.5))
	}
	// Rounding to the nearest microsecond; negatives are 0.
	h.Reset()
	h.Record(1499 * time.Nanosecond)
	h.Record(-time.Second)
	if h.Max() != 1 || h.Min() != 0 || h.Count() != 2 {
		t.Errorf("rounding: min %d max %d", h.Min(), h.Max())
	}
	var empty Histogram
	if empty.Quantile(0.99) != 0 || empty.Mean() != 0 || empty.Max() != 0 {
		t.Error("empty histogram not all zero")
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	d := 1234 * time.Microsecond
	for i := 0; b.Loop(); i++ {
		h.Record(d + time.Duration(i&1023)*time.Microsecond)
	}
}
