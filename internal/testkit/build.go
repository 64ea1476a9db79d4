package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// BuildQuicmesh builds the sidecar binary (cmd/quicmesh, without the race
// detector whatever the test runs with) into dir, for tests that run it
// as a process of its own. It builds it as the Makefile does (SidecarTags,
// no cgo), so process tests run the binary users get.
func BuildQuicmesh(t testing.TB, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building quicmesh: %v", err)
	}
	out := filepath.Join(dir, "quicmesh")
	cmd := exec.Command(goBin, "build", "-tags", SidecarTags(t), "-o", out, "github.com/quicmesh/quicmesh/cmd/quicmesh")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0") // the Makefile's SIDECAR_ENV
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building quicmesh: %v\n%s", err, b)
	}
	return out
}

var sidecarTagsLine = regexp.MustCompile(`(?m)^SIDECAR_TAGS := (\S+)$`)

// SidecarTags returns the build tags the Makefile builds the sidecar
// with (SIDECAR_TAGS), read from the module's Makefile.
func SidecarTags(t testing.TB) string {
	t.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	makefile := filepath.Join(filepath.Dir(strings.TrimSpace(string(gomod))), "Makefile")
	b, err := os.ReadFile(makefile)
	if err != nil {
		t.Fatalf("reading the sidecar's build tags: %v", err)
	}
	m := sidecarTagsLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s sets no SIDECAR_TAGS", makefile)
	}
	return string(m[1])
}
