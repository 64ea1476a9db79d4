package scenario

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The machine is shared: other people's builds and tests may run during a
// measurement. The runner measures how much CPU processes it did not start
// used during each run, so the report can say how quiet the machine was.

type procTicks struct {
	ppid  int
	ticks uint64 // utime + stime
}

// procSnapshot reads utime+stime and the parent of every process under
// root (normally "/proc").
func procSnapshot(root string) map[int]procTicks {
	out := map[int]procTicks{}
	ents, err := os.ReadDir(root)
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "stat"))
		if err != nil {
			continue
		}
		if pt, ok := parseStat(string(b)); ok {
			out[pid] = pt
		}
	}
	return out
}

// parseStat reads ppid, utime and stime from /proc/PID/stat; the command
// name in parentheses may contain spaces and parentheses.
func parseStat(s string) (procTicks, bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procTicks{}, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procTicks{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procTicks{}, false
	}
	return procTicks{ppid: ppid, ticks: ut + st}, true
}

// foreignTicks returns the CPU ticks used between two snapshots by
// processes that are not self or its descendants. A process that appears
// only in after counts with all its ticks; one that exited in between is
// missed.
func foreignTicks(before, after map[int]procTicks, self int) uint64 {
	ours := func(pid int) bool {
		for range 64 {
			if pid == self {
				return true
			}
			p, ok := after[pid]
			if !ok || p.ppid == pid || pid <= 1 {
				return false
			}
			pid = p.ppid
		}
		return false
	}
	var sum uint64
	for pid, a := range after {
		if ours(pid) {
			continue
		}
		if b, ok := before[pid]; ok {
			if a.ticks >= b.ticks {
				sum += a.ticks - b.ticks
			}
		} else {
			sum += a.ticks
		}
	}
	return sum
}
