package scenario

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStat(t *testing.T) {
	s := "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 1234 0 0\n"
	pt, ok := parseStat(s)
	if !ok || pt.ppid != 17 || pt.ticks != 281 {
		t.Errorf("parseStat = %+v %v", pt, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 2 3"} {
		if _, ok := parseStat(bad); ok {
			t.Errorf("parseStat(%q) ok", bad)
		}
	}
}

func TestForeignTicks(t *testing.T) {
	// 100 is the runner; 101 its child (a sidecar), 102 a grandchild;
	// 200 and 201 belong to someone else; 300 started during the run.
	before := map[int]procTicks{100: {1, 10}, 101: {100, 50}, 102: {101, 5}, 200: {1, 1000}, 201: {200, 7}}
	after := map[int]procTicks{100: {1, 20}, 101: {100, 150}, 102: {101, 55}, 200: {1, 1100}, 201: {200, 27}, 300: {1, 40}}
	if got := foreignTicks(before, after, 100); got != 100+20+40 {
		t.Errorf("foreignTicks = %d, want 160", got)
	}
}

func TestProcSnapshot(t *testing.T) {
	root := t.TempDir()
	for pid, stat := range map[string]string{
		"7":    "7 (a) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0",
		"8":    "8 (b) R 7 8 8 0 -1 0 0 0 0 0 10 0 0 0 20 0 1 0 1 0 0",
		"self": "not a pid",
	} {
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap := procSnapshot(root)
	if len(snap) != 2 || snap[7].ticks != 7 || snap[8].ppid != 7 || snap[8].ticks != 10 {
		t.Errorf("snapshot = %+v", snap)
	}
	if len(procSnapshot(filepath.Join(root, "missing"))) != 0 {
		t.Error("missing root")
	}
	if len(procSnapshot("/proc")) == 0 {
		t.Skip("no /proc here")
	}
}
