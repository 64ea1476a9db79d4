package testkit

import (
	"os"
	"testing"
)

// RequireNetnsEnv, when set, turns a missing network-namespace tool into
// a failure instead of a skip: where the tools are installed (CI as root)
// a skip would hide the tests.
const RequireNetnsEnv = "QUICMESH_REQUIRE_NETNS"

// NeedNetns skips t when check (netlab.Available, netlab.TUNAvailable)
// says a network-namespace lab cannot be built here, or fails it when
// RequireNetnsEnv is set.
func NeedNetns(t testing.TB, check func() error) {
	t.Helper()
	if err := check(); err != nil {
		if os.Getenv(RequireNetnsEnv) != "" {
			t.Fatalf("%v (and %s is set)", err, RequireNetnsEnv)
		}
		t.Skip(err)
	}
}
