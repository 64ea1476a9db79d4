package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The sidecar binary links only what the sidecar runs: no load generator,
// no echo apps (they live in quicmesh-dev), no control plane or client-go
// (quicmesh-control), and gRPC only as the SPIFFE
// Workload API client (go-spiffe's workloadapi, which the spiffe identity
// provider needs): nothing else in the sidecar may import it.
// docs/design.md, "Binaries", has the size and memory this costs.
func TestSidecarBinaryLinksNoDevTools(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the dependency check needs the go command: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 100 {
		t.Fatalf("go list -deps listed %d packages; that is not the sidecar's dependency list:\n%s", len(lines), out)
	}
	within := func(pkg, tree string) bool { return pkg == tree || strings.HasPrefix(pkg, tree+"/") }
	forbidden := []string{
		"github.com/quicmesh/quicmesh/bench",
		"github.com/quicmesh/quicmesh/internal/echo",
		// The control plane and client-go are quicmesh-control's
		// (docs/control-plane.md, "Binaries").
		"github.com/quicmesh/quicmesh/internal/control",
		"k8s.io/client-go",
		"k8s.io/apimachinery",
	}
	// Who may import gRPC: gRPC itself, the Workload API client and the
	// provider on it (for status codes).
	grpcImporters := []string{"google.golang.org/grpc", "github.com/spiffe/go-spiffe/v2/workloadapi", "github.com/spiffe/go-spiffe/v2/proto",
		"github.com/quicmesh/quicmesh/identity/spiffe"}
	for _, line := range lines {
		pkg, imports, _ := strings.Cut(line, " ")
		for _, f := range forbidden {
			if within(pkg, f) {
				t.Errorf("quicmesh links %s", pkg)
			}
		}
		for _, imp := range strings.Fields(imports) {
			if within(imp, "google.golang.org/grpc") && !slices.ContainsFunc(grpcImporters, func(tree string) bool { return within(pkg, tree) }) {
				t.Errorf("%s imports %s: the sidecar uses gRPC only for the SPIFFE Workload API", pkg, imp)
			}
		}
	}
}
