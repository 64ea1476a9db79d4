package procfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, stat string
		want       Stat
		bad        bool
	}{
		// The command name may contain spaces and parentheses.
		{"odd name", "1234 (evil) name (x)) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 8 0 12345 1000000 500\n", Stat{PPID: 1, Ticks: 325}, false},
		{"nested parens", "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 1234 0 0\n", Stat{PPID: 17, Ticks: 281}, false},
		{"empty", "", Stat{}, true},
		{"no closing paren", "1 (x S 1", Stat{}, true},
		{"too few fields", "1 (x) S 1 2 3", Stat{}, true},
		{"bad ppid", "1 (x) S p 1 1 0 -1 0 0 0 0 0 1 2", Stat{}, true},
		{"bad times", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 u s", Stat{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tc.stat))
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed as %+v", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestParseStatusMem(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		rss, hwm     uint64
	}{
		{"both", "Name:\tx\nVmPeak:\t 9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1536 kB\nThreads:\t3\n", 1536, 2048},
		{"kernel thread", "Name:\tkthreadd\nThreads:\t1\n", 0, 0},
		{"garbage value", "VmRSS:\tlots kB\nVmHWM:\t7 kB\n", 0, 7},
	} {
		if rss, hwm := ParseStatusMem([]byte(tc.status)); rss != tc.rss || hwm != tc.hwm {
			t.Errorf("%s: rss %d hwm %d, want %d %d", tc.name, rss, hwm, tc.rss, tc.hwm)
		}
	}
}

func writeProc(t *testing.T, root, pid, stat, status string) {
	t.Helper()
	dir := filepath.Join(root, pid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if status != "" {
		if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSnapshotAndReadUsage(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, "7", "7 (a) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", "VmRSS:\t10 kB\nVmHWM:\t20 kB\n")
	writeProc(t, root, "8", "8 (b) R 7 8 8 0 -1 0 0 0 0 0 10 0 0 0 20 0 1 0 1 0 0", "")
	writeProc(t, root, "9", "9 (broken", "")
	writeProc(t, root, "self", "not a pid", "")

	snap := Snapshot(root)
	if len(snap) != 2 || snap[7] != (Stat{PPID: 1, Ticks: 7}) || snap[8] != (Stat{PPID: 7, Ticks: 10}) {
		t.Errorf("snapshot = %+v", snap)
	}
	if len(Snapshot(filepath.Join(root, "missing"))) != 0 {
		t.Error("snapshot of a missing root is not empty")
	}

	if u, err := ReadUsage(root, 7); err != nil || u != (Usage{Ticks: 7, RSSKiB: 10, HWMKiB: 20}) {
		t.Errorf("ReadUsage(7) = %+v, %v", u, err)
	}
	for _, pid := range []int{8, 9, 10} { // no status, bad stat, missing
		if u, err := ReadUsage(root, pid); err == nil {
			t.Errorf("ReadUsage(%d) = %+v, want an error", pid, u)
		}
	}
}

func TestReadUsageSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	u, err := ReadUsage("/proc", os.Getpid())
	if err != nil || u.RSSKiB == 0 {
		t.Fatalf("ReadUsage(self) = %+v, %v", u, err)
	}
	if snap := Snapshot("/proc"); snap[os.Getpid()].PPID != os.Getppid() {
		t.Errorf("snapshot has self's parent %d, want %d", snap[os.Getpid()].PPID, os.Getppid())
	}
}
