package schedlat

import (
	"math"
	"testing"
	"time"
)

func TestLongest(t *testing.T) {
	buckets := []float64{0, 1e-6, 1e-3, 0.1, 0.25, math.Inf(1)}
	tests := []struct {
		name         string
		counts, prev []uint64
		want         time.Duration
	}{
		{"nothing new", []uint64{5, 3, 2, 1, 1}, []uint64{5, 3, 2, 1, 1}, 0},
		{"short waits only", []uint64{9, 4, 2, 1, 1}, []uint64{5, 3, 2, 1, 1}, time.Microsecond},
		{"one long among many", []uint64{900, 40, 3, 1, 1}, []uint64{5, 3, 2, 1, 1}, time.Millisecond},
		{"top bucket", []uint64{5, 3, 2, 1, 2}, []uint64{5, 3, 2, 1, 1}, 250 * time.Millisecond},
		{"old long waits do not count", []uint64{6, 3, 2, 1, 7}, []uint64{5, 3, 2, 1, 7}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := longest(buckets, tt.counts, tt.prev); got != tt.want {
				t.Errorf("longest = %v, want %v", got, tt.want)
			}
		})
	}
}
