package testkit

import (
	"context"
	"testing"
	"time"
)

// Load (other packages' tests, other jobs on the machine, the race
// detector) can slow any step by a large factor, so no "this should not
// hang" wait is a fixed wall-clock figure: it lasts until the test
// binary's own deadline (go test -timeout) is near, and only then fails
// with its own message instead of the runtime's panic and goroutine dump.

// HangGuard is the deadline for "this should not hang" waits: shortly
// before the test binary's -timeout, or ten minutes away without one.
func HangGuard(t testing.TB) time.Time {
	dl, ok := deadline(t)
	if !ok {
		return time.Now().Add(10 * time.Minute)
	}
	// Leave room for cleanups and the failure report.
	return dl.Add(-min(time.Until(dl)/10, 30*time.Second))
}

// deadline is t.Deadline for a *testing.T; benchmarks and fuzz targets
// have none.
func deadline(t testing.TB) (time.Time, bool) {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		return d.Deadline()
	}
	return time.Time{}, false
}

// HangCtx is canceled at HangGuard(t) or when the test ends.
func HangCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithDeadline(t.Context(), HangGuard(t))
	t.Cleanup(cancel)
	return ctx
}

// Eventually polls cond until it holds, failing the test at HangGuard(t)
// with "timed out waiting for " + what. The poll starts at 1 ms and backs
// off to 20 ms, so a condition that is already true or soon true costs
// almost nothing.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !poll(HangGuard(t), 20*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// poll calls cond, with a pause between calls growing from 1 ms to
// maxPause, until it holds (true) or the deadline passes (false).
func poll(deadline time.Time, maxPause time.Duration, cond func() bool) bool {
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPause)
	}
	return true
}
