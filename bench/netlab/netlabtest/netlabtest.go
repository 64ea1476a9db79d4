// Package netlabtest holds what every test on network namespaces does
// first: decide whether it may skip.
package netlabtest

import (
	"os"
	"testing"
)

// RequireEnv, when set (.ci/run sets it, where iproute2 and iptables are
// installed and the tests run as root), turns a lab that cannot be built
// into a failure instead of a skip.
const RequireEnv = "QUICMESH_REQUIRE_NETNS"

// Need skips t with check's reason when check fails (e.g.
// netlab.Available), or fails it when RequireEnv is set.
func Need(t testing.TB, check func() error) {
	t.Helper()
	if err := check(); err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("%v (and %s is set)", err, RequireEnv)
		}
		t.Skip(err)
	}
}
