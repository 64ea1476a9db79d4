package testkit

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The kit is test support: no package that ships (or that the sidecar
// links) may import it.
func TestOnlyTestsImportTestkit(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the import check needs the go command: %v", err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goTool, "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const kit = "github.com/quicmesh/quicmesh/internal/testkit"
	within := func(pkg string) bool { return pkg == kit || strings.HasPrefix(pkg, kit+"/") }
	n := 0
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		n++
		if within(pkg) {
			continue
		}
		for _, imp := range strings.Fields(imports) {
			if within(imp) {
				t.Errorf("%s imports %s outside its tests", pkg, imp)
			}
		}
	}
	if n < 20 {
		t.Fatalf("go list listed %d packages; that is not the module:\n%s", n, out)
	}
}

func TestLeakCheckReportsNewGoroutinesGrouped(t *testing.T) {
	before := goroutines()
	stop := make(chan struct{})
	for range 3 {
		go func() { <-stop }()
	}
	// Once the three goroutines block where they were started, they are
	// one group.
	var got string
	Eventually(t, "three blocked goroutines", func() bool {
		got = groupStacks(newGoroutines(before))
		return strings.Contains(got, "3 x goroutine [chan receive]:")
	})
	close(stop)
	if !strings.Contains(got, "3 goroutines in 1 groups") || !strings.Contains(got, "3 x goroutine [chan receive]:") ||
		!strings.Contains(got, "TestLeakCheckReportsNewGoroutinesGrouped") {
		t.Fatalf("report:\n%s", got)
	}
	if left := waitForGoroutines(before, HangGuard(t)); left != "" {
		t.Fatalf("goroutines that ended are reported:\n%s", left)
	}
}

func TestLeakCheckGivesUpOnceNothingEnds(t *testing.T) {
	defer func(d time.Duration) { leakSettle = d }(leakSettle)
	leakSettle = 200 * time.Millisecond
	before := goroutines()
	stop := make(chan struct{})
	defer close(stop)
	go func() { <-stop }()
	start := time.Now()
	left := waitForGoroutines(before, HangGuard(t))
	if left == "" || !strings.Contains(left, "1 goroutines in 1 groups") {
		t.Fatalf("a blocked goroutine is not reported:\n%s", left)
	}
	if d := time.Since(start); d < leakSettle {
		t.Fatalf("gave up after %v, before %v without change", d, leakSettle)
	}
}

func TestLogBufferLines(t *testing.T) {
	var b LogBuffer
	log := b.Logger(nil)
	log.Info("peer dial failed", "n", 1)
	log.Info("ready")
	log.Info("ready again")
	if n := len(b.Lines("peer dial failed")); n != 1 {
		t.Errorf("Lines(quoted message): %d, want 1", n)
	}
	if n := len(b.Lines("ready")); n != 1 {
		t.Errorf("Lines(bare message): %d, want 1 (not the longer one):\n%s", n, b.String())
	}
	if n := b.Count("ready"); n != 2 {
		t.Errorf("Count(substring) = %d, want 2", n)
	}
}

func TestEventuallyReturnsOnceTrue(t *testing.T) {
	n := 0
	Eventually(t, "the third call", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond called %d times", n)
	}
}
