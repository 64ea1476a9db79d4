package scenario

import (
	"testing"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
)

func TestForeignTicks(t *testing.T) {
	// 100 is the runner; 101 its child (a sidecar), 102 a grandchild;
	// 200 and 201 belong to someone else; 300 started during the run.
	st := func(ppid int, ticks uint64) procfs.Stat { return procfs.Stat{PPID: ppid, Ticks: ticks} }
	before := map[int]procfs.Stat{100: st(1, 10), 101: st(100, 50), 102: st(101, 5), 200: st(1, 1000), 201: st(200, 7)}
	after := map[int]procfs.Stat{100: st(1, 20), 101: st(100, 150), 102: st(101, 55), 200: st(1, 1100), 201: st(200, 27), 300: st(1, 40)}
	for _, tc := range []struct {
		name string
		self int
		want uint64
	}{
		{"runner", 100, 100 + 20 + 40},
		{"sidecar", 101, 10 + 100 + 20 + 40},
		{"nobody", 999, 10 + 100 + 50 + 100 + 20 + 40},
	} {
		if got := foreignTicks(before, after, tc.self); got != tc.want {
			t.Errorf("%s: foreignTicks = %d, want %d", tc.name, got, tc.want)
		}
	}
	// A parent loop (PID reuse between snapshots) must not hang.
	loop := map[int]procfs.Stat{5: st(6, 1), 6: st(5, 1)}
	if got := foreignTicks(nil, loop, 100); got != 2 {
		t.Errorf("parent loop: %d, want 2", got)
	}
}
