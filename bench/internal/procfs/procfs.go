// Package procfs reads the few figures of Linux's /proc that the
// benchmark tools need: a process's parent and CPU time (/proc/PID/stat),
// its resident memory (/proc/PID/status), and the same for every process
// at once. The load generator samples the proxies with it; the scenario
// runner measures how busy the rest of the machine was.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ClockTicksPerSecond is the unit of utime and stime in /proc/PID/stat
// (USER_HZ, CLK_TCK), 100 on Linux.
const ClockTicksPerSecond = 100

// Stat is what the tools read from /proc/PID/stat.
type Stat struct {
	PPID int
	// Ticks is utime + stime, in 1/ClockTicksPerSecond seconds.
	Ticks uint64
}

// ParseStat reads the parent and utime+stime (fields 4, 14 and 15) of the
// content of /proc/PID/stat. The command name (field 2) is in parentheses
// and may itself contain spaces and parentheses, so fields are counted
// after the last ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("malformed stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return Stat{}, errors.New("malformed stat: too few fields")
	}
	ppid, err := strconv.Atoi(f[4-3])
	if err != nil {
		return Stat{}, errors.New("malformed stat: ppid")
	}
	u, err1 := strconv.ParseUint(f[14-3], 10, 64)
	s, err2 := strconv.ParseUint(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		return Stat{}, errors.New("malformed stat: utime/stime")
	}
	return Stat{PPID: ppid, Ticks: u + s}, nil
}

// ParseStatusMem reads VmRSS and VmHWM (kB) from the content of
// /proc/PID/status; a missing line (kernel threads, zombies) reads as 0.
func ParseStatusMem(b []byte) (rssKiB, hwmKiB uint64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		var dst *uint64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &rssKiB
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &hwmKiB
		default:
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				*dst = v
			}
		}
	}
	return rssKiB, hwmKiB
}

// Usage is a process's CPU time and memory at one moment.
type Usage struct {
	Ticks          uint64
	RSSKiB, HWMKiB uint64
}

// ReadUsage reads process pid under root (normally "/proc").
func ReadUsage(root string, pid int) (Usage, error) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Usage{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return Usage{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return Usage{}, err
	}
	u := Usage{Ticks: st.Ticks}
	u.RSSKiB, u.HWMKiB = ParseStatusMem(b)
	return u, nil
}

// Snapshot reads the Stat of every process under root (normally
// "/proc"); processes that vanish or cannot be read are left out.
func Snapshot(root string) map[int]Stat {
	out := map[int]Stat{}
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
		if st, err := ParseStat(b); err == nil {
			out[pid] = st
		}
	}
	return out
}
