package sidecar_test

import (
	"context"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/detect"
)

// Load (other packages' tests, other jobs on the machine, the race
// detector) can slow any step down by a large factor, so no hang guard in
// these tests is a fixed wall-clock figure: a step that waits on the
// network waits until the test binary's own deadline (go test -timeout)
// is near, and only then fails with its own message instead of the
// runtime's panic. Timing assertions take their bounds from the
// configuration under test instead.

// hangGuard is the deadline for "this should not hang" waits: shortly
// before the test binary's -timeout, or ten minutes away without one.
func hangGuard(t *testing.T) time.Time {
	dl, ok := t.Deadline()
	if !ok {
		return time.Now().Add(10 * time.Minute)
	}
	// Leave room for cleanups and the failure report.
	return dl.Add(-min(time.Until(dl)/10, 30*time.Second))
}

// hangCtx is canceled at hangGuard(t) or when the test ends.
func hangCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithDeadline(t.Context(), hangGuard(t))
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds, failing the test (naming what it
// waited for) at hangGuard(t).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := hangGuard(t)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failFastBound separates a client that fails because of the 1 s
// handshake timeout the test meshes configure (about 2 s with protocol
// detection) from one that hangs until the 60 s QUIC idle timeout: half
// the idle timeout, far from both, so load cannot push one onto the other.
const failFastBound = 30 * time.Second

// clientsSpeakFirst is the protocol detection for outbound listeners whose
// every client sends first (HTTP, gRPC, WebSocket): wait for the first
// bytes until the hang guard. With the 1 s default, a client goroutine
// starved for a second between connecting and writing (seen at load 14
// on 2 cores) gets its HTTP connection tunnelled as opaque TCP, by design
// for server-speaks-first protocols, and so bypasses the HTTP handling
// (limits, identity header, metrics) these tests assert on.
func clientsSpeakFirst(t *testing.T) detect.Config {
	return detect.Config{Timeout: time.Until(hangGuard(t))}
}
