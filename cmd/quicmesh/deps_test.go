package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The sidecar binary links only what the sidecar runs: no gRPC, no load
// generator, no echo apps (they live in quicmesh-dev). docs/design.md,
// "Binaries", has the size and memory this saves.
func TestSidecarBinaryLinksNoDevTools(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the dependency check needs the go command: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list -deps listed %d packages; that is not the sidecar's dependency list:\n%s", len(deps), out)
	}
	forbidden := []string{
		"google.golang.org/grpc",
		"github.com/quicmesh/quicmesh/bench",
		"github.com/quicmesh/quicmesh/internal/echo",
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("quicmesh links %s", dep)
			}
		}
	}
}
