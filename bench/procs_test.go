package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
)

func writeFakeProc(t *testing.T, root string, pid int, utime, stime, rssKiB, hwmKiB uint64) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (fake proc) S 1 1 1 0 -1 0 0 0 0 0 %d %d 0 0 20 0 1 0 1 1 1\n", pid, utime, stime)
	status := fmt.Sprintf("Name:\tfake\nVmHWM:\t%d kB\nVmRSS:\t%d kB\n", hwmKiB, rssKiB)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestProcSamplerFake(t *testing.T) {
	root := t.TempDir()
	writeFakeProc(t, root, 10, 1000, 500, 10*1024, 50*1024)
	s := NewProcSampler([]Proc{{"a", 10}, {"missing", 11}})
	s.Root = root
	s.Interval = time.Hour // sample by hand
	if err := s.Start(); err == nil {
		t.Error("Start did not report the missing process")
	}
	writeFakeProc(t, root, 10, 1200, 550, 30*1024, 50*1024) // peak
	s.Sample()
	writeFakeProc(t, root, 10, 1300, 600, 20*1024, 50*1024)
	st := s.Stop(1000)
	if len(st) != 2 {
		t.Fatalf("%d stats", len(st))
	}
	a := st[0]
	// (1300+600) - (1000+500) = 400 ticks = 4 s; 4 s / 1000 requests = 4000µs.
	if a.Name != "a" || a.PID != 10 || a.CPUSeconds != 4 || a.CPUMicrosPerRequest != 4000 ||
		a.PeakRSSMiB != 30 || a.HWMRSSMiB != 50 || a.Samples != 3 || a.Error != "" {
		t.Errorf("a = %+v", a)
	}
	if st[1].Error == "" || st[1].Samples != 0 {
		t.Errorf("missing = %+v", st[1])
	}
	if again := s.Stop(1000); again[0] != a {
		t.Errorf("second Stop = %+v", again[0])
	}
}

func TestProcSamplerSelf(t *testing.T) {
	s := NewProcSampler([]Proc{{"self", os.Getpid()}})
	s.Interval = 10 * time.Millisecond
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the kernel has charged at least 5 ticks (or give up).
	u0, err := procfs.ReadUsage("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		for range 100_000 {
			x++
		}
		if u1, _ := procfs.ReadUsage("/proc", os.Getpid()); u1.Ticks >= u0.Ticks+5 {
			break
		}
	}
	time.Sleep(30 * time.Millisecond)
	st := s.Stop(100)[0]
	// The kernel updates VmHWM lazily (per-CPU RSS counters are folded in
	// at intervals), so a VmRSS sample can briefly exceed it.
	if st.CPUSeconds < 0.05 || st.PeakRSSMiB <= 0 || st.HWMRSSMiB < 0.9*st.PeakRSSMiB || st.Samples < 3 {
		t.Errorf("self = %+v (x=%d)", st, x)
	}
}

func TestParseProc(t *testing.T) {
	if p, err := ParseProc("sidecar-a=123"); err != nil || p != (Proc{"sidecar-a", 123}) {
		t.Errorf("= %+v %v", p, err)
	}
	for _, bad := range []string{"123", "=1", "a=", "a=x", "a=-1", "a=0"} {
		if _, err := ParseProc(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
