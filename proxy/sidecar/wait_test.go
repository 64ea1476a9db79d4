package sidecar_test

import "time"

// Waits in these tests use internal/testkit: "this should not hang" waits
// last until the test binary's own deadline (testkit.HangGuard), and
// timing assertions take their bounds from the configuration under test.

// failFastBound separates a client that fails because of the 1 s
// handshake timeout the test meshes configure (about 2 s with protocol
// detection) from one that hangs until the 60 s QUIC idle timeout: half
// the idle timeout, far from both, so load cannot push one onto the other.
const failFastBound = 30 * time.Second
