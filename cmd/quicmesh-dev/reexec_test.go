package main

import (
	"os"
	"testing"
)

// reexecEnv makes the test binary run quicmesh-dev instead of the tests,
// so a test can start `quicmesh-dev lab up` as a process of its own (it
// runs until signalled, and its apps run copies of it).
const reexecEnv = "QUICMESH_DEV_TEST_REEXEC"

func TestMain(m *testing.M) {
	if os.Getenv(reexecEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
