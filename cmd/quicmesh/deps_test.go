package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
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

// The sidecar is built with gRPC's grpcnotrace tag (Makefile SIDECAR_TAGS,
// and bench/run.sh the same way). Without it gRPC links golang.org/x/net/trace
// (its request tracing, which runs only after grpc.EnableTracing = true)
// and with it text/template, whose method calls by name at run time make
// the linker keep every exported method of every type in the binary:
// 4.6 MB more file and ~2 MB more RSS per sidecar (docs/benchmarks.md,
// "Sidecar memory at 1,000 req/s"). This fails if the two builds drift
// apart, if something else pulls in a template package or the tracing
// package, or if the tag stops mattering (then drop it).
func TestSidecarBuildTags(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the dependency check needs the go command: %v", err)
	}
	makefile, tags := sidecarTags(t)
	if !strings.Contains(makefile, "$(SIDECAR_ENV) $(GO) build -tags $(SIDECAR_TAGS) -o $(BIN) ./cmd/quicmesh\n") {
		t.Error("the Makefile does not build the sidecar with -tags $(SIDECAR_TAGS)")
	}
	runSh, err := os.ReadFile("../../bench/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	if want := "CGO_ENABLED=0 $GO build -tags " + tags + " -o bin/quicmesh ./cmd/quicmesh\n"; !strings.Contains(string(runSh), want) {
		t.Errorf("bench/run.sh does not build the sidecar as the Makefile does: want the line %q", want)
	}
	tunnelSh, err := os.ReadFile("../../bench/tunnel-iperf.sh")
	if err != nil {
		t.Fatal(err)
	}
	if want := "CGO_ENABLED=0 $GO build -tags " + tags + ` -o "$WORK/quicmesh" ./cmd/quicmesh` + "\n"; !strings.Contains(string(tunnelSh), want) {
		t.Errorf("bench/tunnel-iperf.sh does not build the sidecar as the Makefile does: want the line %q", want)
	}
	deps := func(tags string) []string {
		t.Helper()
		out, err := exec.Command(goTool, "list", "-deps", "-tags", tags, ".").Output()
		if err != nil {
			t.Fatalf("go list -deps -tags %q: %v", tags, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 100 {
			t.Fatalf("go list -deps -tags %q listed %d packages; that is not the sidecar's dependency list:\n%s", tags, len(lines), out)
		}
		return lines
	}
	const tracing = "golang.org/x/net/trace"
	if !slices.Contains(deps(""), tracing) {
		t.Errorf("without -tags %s the sidecar no longer links %s: the tag may no longer be needed (measure, then drop it from the Makefile, bench/run.sh and this test)", tags, tracing)
	}
	for _, pkg := range deps(tags) {
		if pkg == tracing || pkg == "text/template" || pkg == "html/template" {
			t.Errorf("the sidecar built with -tags %s links %s (find the importer with go list -deps -f '{{.ImportPath}} {{.Imports}}')", tags, pkg)
		}
	}
}

// sidecarTags returns the Makefile and its SIDECAR_TAGS.
func sidecarTags(t *testing.T) (makefile, tags string) {
	t.Helper()
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	return string(b), testkit.SidecarTags(t)
}

// A sidecar's file-backed RSS is about the size of the binary's loaded,
// read-only segments: under load 92 % of .text, all of .rodata and 81 %
// of .gopclntab are resident, whichever code runs (docs/benchmarks.md,
// "Sidecar memory at 1,000 req/s"). This builds the sidecar as the
// Makefile does and checks two things: the linker still drops exported
// methods nothing calls (a package that calls methods by a name computed
// at run time, as text/template does, makes it keep all of them: 3 MB
// of text, rodata and pclntab), and those segments stay within a budget
// with ~10 % headroom over 16.4 MiB (2026-12-03, without net/http's
// bundled HTTP/2), so a dependency that adds
// megabytes to every sidecar is a decision, not an accident.
func TestSidecarBinarySize(t *testing.T) {
	if testing.Short() {
		t.Skip("links the sidecar binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the size check needs the go command: %v", err)
	}
	_, tags := sidecarTags(t)
	bin := t.TempDir() + "/quicmesh"
	cmd := exec.Command(goTool, "build", "-tags", tags, "-o", bin, ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0") // Makefile SIDECAR_ENV
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	// Exported methods of types the sidecar uses, which it never calls.
	canaries := map[string]bool{"strings.(*Builder).Cap": false, "regexp.(*Regexp).LiteralPrefix": false}
	// net/http's bundled HTTP/2, which the nethttpomithttp2 tag leaves out.
	const bundledH2 = "net/http.(*http2Framer).ReadFrame"
	canaries[bundledH2] = false
	for _, s := range syms {
		if _, ok := canaries[s.Name]; ok {
			canaries[s.Name] = true
		}
	}
	for name, linked := range canaries {
		switch {
		case linked && name == bundledH2:
			t.Errorf("the sidecar built with -tags %s links net/http's bundled HTTP/2 (%s): the Makefile's SIDECAR_TAGS lost nethttpomithttp2, or Go no longer honours it", tags, name)
		case linked:
			t.Errorf("the sidecar links %s, which nothing calls: some package calls methods by a run-time name (reflect Value.MethodByName or Type.Method), and the linker keeps every exported method; find it with go build -ldflags=-dumpdep", name)
		}
	}
	var loaded uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_W == 0 {
			loaded += p.Filesz
		}
	}
	const budget = 18_500 << 10
	t.Logf("read-only loaded segments: %d KiB (budget %d KiB)", loaded>>10, budget>>10)
	if loaded > budget {
		t.Errorf("the sidecar's read-only loaded segments are %d KiB, over the %d KiB budget: nearly all of them are resident in every sidecar; see what grew (go tool nm -size -sort size) before raising the budget", loaded>>10, budget>>10)
	}
}
