package testkit

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildQuicmesh builds the sidecar binary (cmd/quicmesh, without the race
// detector whatever the test runs with) into dir, for tests that run it
// as a process of its own.
func BuildQuicmesh(t testing.TB, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building quicmesh: %v", err)
	}
	out := filepath.Join(dir, "quicmesh")
	if b, err := exec.Command(goBin, "build", "-o", out, "github.com/quicmesh/quicmesh/cmd/quicmesh").CombinedOutput(); err != nil {
		t.Fatalf("building quicmesh: %v\n%s", err, b)
	}
	return out
}
