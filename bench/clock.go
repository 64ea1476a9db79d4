package bench

import (
	"context"
	"math"
	"math/bits"
	"time"
)

// Clock is the time source of a run. The engine reads the time and waits
// for scheduled send times only through it, so tests can drive the pacing
// schedule with a fake clock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// SleepUntil returns once Now() >= t (at once if t has passed), or
	// ctx's error if ctx ends first.
	SleepUntil(ctx context.Context, t time.Time) error
}

// SystemClock is the real clock (monotonic time.Now and timers).
var SystemClock Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// preciseSleep is the last stretch of a wait that is slept in a blocking
// nanosleep rather than on a Go timer: an idle Go process wakes timers
// through the netpoller with about a millisecond of lateness, which an
// open-loop generator would report as latency (it times requests from their
// intended send time). A nanosleep blocks only its own OS thread and
// wakes within the kernel's timer slack (50 µs by default).
const preciseSleep = 2 * time.Millisecond

func (systemClock) SleepUntil(ctx context.Context, t time.Time) error {
	if d := time.Until(t) - preciseSleep; d > 0 {
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if d := time.Until(t); d > 0 {
		nanosleep(d)
	}
	return ctx.Err()
}

// Schedule is the uniform open-loop pacing schedule: request i is intended
// to be sent at Start + i/Rate. Every time is computed from i directly, so
// the schedule never drifts however long it runs.
type Schedule struct {
	Start time.Time
	Rate  float64 // requests per second, > 0
}

// Offset returns the intended send time of request i relative to Start.
// For an integral rate it is exact (floor of i·1e9/rate nanoseconds);
// otherwise it is rounded to the nearest nanosecond.
func (s Schedule) Offset(i int64) time.Duration {
	if i <= 0 {
		return 0
	}
	if s.Rate == math.Trunc(s.Rate) && s.Rate >= 1 && s.Rate < 1<<63 {
		r := uint64(s.Rate)
		hi, lo := bits.Mul64(uint64(i), uint64(time.Second))
		if hi < r {
			q, _ := bits.Div64(hi, lo, r)
			if q <= math.MaxInt64 {
				return time.Duration(q)
			}
		}
		return math.MaxInt64
	}
	ns := math.Round(float64(i) * 1e9 / s.Rate)
	if ns >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// At returns the intended send time of request i.
func (s Schedule) At(i int64) time.Time { return s.Start.Add(s.Offset(i)) }

// Index returns the number of requests scheduled strictly before Start+d,
// i.e. the smallest i with Offset(i) >= d.
func (s Schedule) Index(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	i := int64(math.Ceil(d.Seconds() * s.Rate))
	for i > 0 && s.Offset(i-1) >= d {
		i--
	}
	for s.Offset(i) < d {
		i++
	}
	return i
}
