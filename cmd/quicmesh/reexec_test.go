package main

import (
	"os"
	"runtime"
	"testing"
)

// reexecEnv makes the test binary run `quicmesh` instead of the tests, so
// a test can start sidecar processes (under other UIDs, say) without
// building the binary: exec a copy of os.Executable() with the quicmesh
// arguments and reexecEnv=1.
const reexecEnv = "QUICMESH_TEST_REEXEC"

func TestMain(m *testing.M) {
	if os.Getenv(reexecEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	// Sidecars run inside the test process leave its GOMAXPROCS alone;
	// TestCoresApplied checks the real thing in sidecar processes.
	setGOMAXPROCS = func(int) int { return runtime.GOMAXPROCS(0) }
	os.Exit(m.Run())
}
