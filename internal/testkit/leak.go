package testkit

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// A goroutine that is still winding down (a connection closing, a timer
// firing, a handler returning) keeps the set of new goroutines shrinking;
// a leaked one never ends. So the check waits for the set to empty for as
// long as it keeps shrinking, and gives up only after leakSettle without
// any goroutine ending, or at the hang guard. On a loaded 2-core machine
// a goroutine that is merely slow ends within seconds; no quicmesh
// goroutine waits longer than that for a timer once its owner is closed.
var leakSettle = 15 * time.Second // a variable for the kit's own test

// ignoredStacks are goroutines that are not the code under test's: other
// tests running in parallel (or their subtests), the testing package's
// own, and process-wide runtime helpers started on first use.
var ignoredStacks = []string{
	"testing.tRunner(",
	"testing.(*T).Run(",
	"testing.(*M).",
	"testing.runFuzzing(",
	"os/signal.loop(",
	"runtime.ensureSigM(",
}

var checked sync.Map // testing.TB → struct{}: CheckLeaks already armed

// CheckLeaks fails t if goroutines started during it are still running
// after its cleanups ran, and prints their stacks, grouped. Call it first
// in the test (cleanups run last-in first-out, so the check runs after
// every cleanup registered later). A second call in the same test does
// nothing: its baseline would hold goroutines of the first half.
func CheckLeaks(t testing.TB) {
	t.Helper()
	if _, dup := checked.LoadOrStore(t, struct{}{}); dup {
		return
	}
	before := goroutines()
	t.Cleanup(func() {
		checked.Delete(t)
		if leaked := waitForGoroutines(before, HangGuard(t)); leaked != "" {
			t.Errorf("goroutine leak: goroutines started by the test are still running after its cleanups:\n%s", leaked)
		}
	})
}

// Baseline is the set of goroutines running at one moment, for a leak
// check in the middle of a test: take it before starting something, and
// Check after closing it.
type Baseline struct{ ids map[int]string }

// TakeBaseline records the goroutines running now.
func TakeBaseline() Baseline { return Baseline{goroutines()} }

// Check fails t if goroutines started since b was taken are still running
// (waiting for them as CheckLeaks does), and prints their stacks, grouped.
func (b Baseline) Check(t testing.TB) {
	t.Helper()
	if leaked := waitForGoroutines(b.ids, HangGuard(t)); leaked != "" {
		t.Errorf("goroutine leak: goroutines started since the baseline are still running:\n%s", leaked)
	}
}

// Started returns the goroutines started since b was taken that are
// running now, grouped by stack, without waiting ("" if none).
func (b Baseline) Started() string {
	gs := newGoroutines(b.ids)
	if len(gs) == 0 {
		return ""
	}
	return groupStacks(gs)
}

// Main runs the tests of a package and then fails the run if goroutines
// they started are still running; use it as the whole of TestMain:
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
func Main(m *testing.M) {
	before := goroutines()
	code := m.Run()
	if code == 0 {
		if leaked := waitForGoroutines(before, time.Now().Add(10*time.Minute)); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutine leak: goroutines started by the tests are still running after they all ended:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitForGoroutines waits until no goroutine but those in before (and the
// ignored ones) runs, and returns the others, grouped by stack, if some
// are still running when it gives up ("" when none are).
func waitForGoroutines(before map[int]string, deadline time.Time) string {
	var left map[int]string
	lastChange := time.Now()
	settled := func() bool {
		now := newGoroutines(before)
		if !sameKeys(now, left) {
			lastChange = time.Now() // one ended (or a closing one started another)
		}
		left = now
		return len(now) == 0 || time.Since(lastChange) > leakSettle
	}
	poll(deadline, 100*time.Millisecond, settled)
	if len(left) == 0 {
		return ""
	}
	return groupStacks(left)
}

func sameKeys(a, b map[int]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

var goroutineHeader = regexp.MustCompile(`^goroutine (\d+) \[`)

// Stacks returns the stack of every goroutine (header line first), by
// goroutine ID, for a test that waits for goroutines to reach a state.
func Stacks() map[int]string { return goroutines() }

// goroutines returns the stack of every goroutine, by goroutine ID.
func goroutines() map[int]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[int]string{}
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		m := goroutineHeader.FindStringSubmatch(g)
		if m == nil {
			continue
		}
		var id int
		fmt.Sscan(m[1], &id)
		out[id] = g
	}
	return out
}

// newGoroutines is the goroutines running now that were not in before
// and are not ignored.
func newGoroutines(before map[int]string) map[int]string {
	out := map[int]string{}
	for id, g := range goroutines() {
		if _, old := before[id]; old {
			continue
		}
		if slices.ContainsFunc(ignoredStacks, func(s string) bool { return strings.Contains(g, s) }) {
			continue
		}
		out[id] = g
	}
	return out
}

var (
	stackHeader = regexp.MustCompile(`^goroutine \d+ \[([^,\]]+)[^\]]*\]:`)
	pcOffset    = regexp.MustCompile(` \+0x[0-9a-f]+$`)
	callArgs    = regexp.MustCompile(`\((0x[0-9a-f]+|\.\.\.)(, (0x[0-9a-f]+|\.\.\.|\{[^}]*\}))*\)$`)
	createdBy   = regexp.MustCompile(` in goroutine \d+$`)
)

// groupStacks prints goroutines with the same stack (state, functions and
// lines; not IDs, arguments or wait times) once, most numerous first.
func groupStacks(gs map[int]string) string {
	groups := map[string]int{}
	for _, g := range gs {
		lines := strings.Split(strings.TrimSpace(g), "\n")
		lines[0] = stackHeader.ReplaceAllString(lines[0], "[$1]:")
		for i := 1; i < len(lines); i++ {
			l := pcOffset.ReplaceAllString(lines[i], "")
			l = callArgs.ReplaceAllString(l, "(...)")
			lines[i] = createdBy.ReplaceAllString(l, "")
		}
		groups[strings.Join(lines, "\n")]++
	}
	keys := slices.Collect(maps.Keys(groups))
	slices.SortFunc(keys, func(a, b string) int {
		if groups[a] != groups[b] {
			return groups[b] - groups[a]
		}
		return strings.Compare(a, b)
	})
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d goroutines in %d groups\n", len(gs), len(keys))
	for _, k := range keys {
		fmt.Fprintf(&sb, "\n%d x goroutine %s\n", groups[k], k)
	}
	return sb.String()
}
