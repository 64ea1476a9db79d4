package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The sidecar binary links only what the sidecar runs: no load generator,
// no echo apps (they live in quicmesh-dev), no control plane or client-go
// (quicmesh-control), and gRPC only as a client of the SPIFFE Workload
// API (go-spiffe's workloadapi, which the spiffe identity provider needs)
// and of the control plane (--control): nothing else in the sidecar may
// import it.
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
	// The control plane's client is linked (--control), so the check below
	// sees what it pulls in.
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, "github.com/quicmesh/quicmesh/internal/controlclient ")
	}) {
		t.Fatal("quicmesh does not link internal/controlclient: --control is not wired, or the list is not the sidecar's")
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
	// provider on it (for status codes), and the control plane's client
	// side: its generated stubs, the dialer, the provider and the resolver.
	grpcImporters := []string{"google.golang.org/grpc", "github.com/spiffe/go-spiffe/v2/workloadapi", "github.com/spiffe/go-spiffe/v2/proto",
		"github.com/quicmesh/quicmesh/identity/spiffe",
		"github.com/quicmesh/quicmesh/internal/controlpb", "github.com/quicmesh/quicmesh/internal/controlclient",
		"github.com/quicmesh/quicmesh/identity/controlplane", "github.com/quicmesh/quicmesh/discovery/controlplane"}
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

// The Makefile and bench/run.sh build the sidecar with CGO_ENABLED=0: a
// static binary maps no libc or ld.so, ~1.6 MB less RSS per sidecar
// (docs/benchmarks.md, "Sidecar memory"). That is only safe while every
// package the sidecar links that has cgo files is one whose cgo-less build
// does the same job: runtime/cgo (not linked without cgo at all) and net
// (Go's own resolver instead of getaddrinfo; on Linux it is the default
// with cgo too). A new dependency with cgo files fails here, so whoever
// adds it decides whether the static build still does what it should.
func TestSidecarNeedsNoCgo(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the dependency check needs the go command: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{len .CgoFiles}}", ".")
	// List what a cgo build would compile, whatever the environment says.
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 100 {
		t.Fatalf("go list -deps listed %d packages; that is not the sidecar's dependency list:\n%s", len(lines), out)
	}
	withoutCgoFallback := map[string]bool{"runtime/cgo": true, "net": true}
	var cgoPkgs []string
	for _, line := range lines {
		pkg, n, _ := strings.Cut(line, " ")
		if n != "0" {
			cgoPkgs = append(cgoPkgs, pkg)
			if !withoutCgoFallback[pkg] {
				t.Errorf("the sidecar links %s, which has cgo files: check that its CGO_ENABLED=0 build (Makefile, bench/run.sh) still works the same, then list it here", pkg)
			}
		}
	}
	// net has cgo files on every platform this runs on: seeing none means
	// the template above no longer reports them, and the check is blind.
	if !slices.Contains(cgoPkgs, "net") {
		t.Fatalf("go list reported no cgo files for net (packages with cgo files: %v): the check cannot see cgo dependencies", cgoPkgs)
	}
}
