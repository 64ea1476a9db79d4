package scenario

import (
	"math"
	"os"
	"time"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
)

// The machine is shared: other people's builds and tests may run during a
// measurement. The runner measures how much CPU processes it did not start
// used during each run, so the report can say how quiet the machine was.
// (The proxies' own CPU and memory are sampled by the load generator:
// liveTarget.sample.)

// otherCPU measures the CPU that processes other than the runner and its
// descendants use from its start.
type otherCPU struct {
	before map[int]procfs.Stat
	t0     time.Time
}

func startOtherCPU() otherCPU { return otherCPU{before: procfs.Snapshot("/proc"), t0: time.Now()} }

// cores is the CPU used since the start, in cores (two decimals).
func (o otherCPU) cores() float64 {
	secs := time.Since(o.t0).Seconds()
	if secs <= 0 {
		return 0
	}
	ticks := foreignTicks(o.before, procfs.Snapshot("/proc"), os.Getpid())
	return math.Round(float64(ticks)/procfs.ClockTicksPerSecond/secs*100) / 100
}

// foreignTicks returns the CPU ticks used between two snapshots by
// processes that are not self or its descendants. A process that appears
// only in after counts with all its ticks; one that exited in between is
// missed.
func foreignTicks(before, after map[int]procfs.Stat, self int) uint64 {
	ours := func(pid int) bool {
		for range 64 {
			if pid == self {
				return true
			}
			p, ok := after[pid]
			if !ok || p.PPID == pid || pid <= 1 {
				return false
			}
			pid = p.PPID
		}
		return false
	}
	var sum uint64
	for pid, a := range after {
		if ours(pid) {
			continue
		}
		if b, ok := before[pid]; ok {
			if a.Ticks >= b.Ticks {
				sum += a.Ticks - b.Ticks
			}
		} else {
			sum += a.Ticks
		}
	}
	return sum
}
