package main

import (
	"os"
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
	os.Exit(m.Run())
}
