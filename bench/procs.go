package bench

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
)

// Proc names a process to sample.
type Proc struct {
	Name string
	PID  int
}

// ParseProc parses "name=PID".
func ParseProc(s string) (Proc, error) {
	name, pidStr, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return Proc{}, fmt.Errorf("%q is not name=PID", s)
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return Proc{}, fmt.Errorf("%q: PID must be a positive integer", s)
	}
	return Proc{Name: name, PID: pid}, nil
}

// ProcStats is what a ProcSampler measured for one process over the run.
type ProcStats struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// CPUSeconds is user+system CPU time used between Start and Stop.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUMicrosPerRequest is CPUSeconds in µs divided by the run's
	// requests (0 when there were none).
	CPUMicrosPerRequest float64 `json:"cpu_us_per_request"`
	// PeakRSSMiB is the largest VmRSS sampled between Start and Stop.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// HWMRSSMiB is VmHWM at Stop: the process's lifetime peak RSS, which
	// may predate the run.
	HWMRSSMiB float64 `json:"hwm_rss_mib"`
	// Samples is the number of successful samples taken.
	Samples int `json:"samples"`
	// Error is set if the process could not be read (e.g. it exited before
	// the run); the figures then cover the samples that succeeded.
	Error string `json:"error,omitempty"`
}

// ProcSampler samples /proc/PID/stat (utime+stime) and /proc/PID/status
// (VmRSS, VmHWM) of a set of processes periodically between Start and
// Stop.
type ProcSampler struct {
	// Interval between samples (default 250ms). Set before Start.
	Interval time.Duration
	// Root is the proc file system (default "/proc"). Set before Start.
	Root string

	procs   []Proc
	mu      sync.Mutex
	state   []procState
	stop    chan struct{}
	done    chan struct{}
	started bool
	stopped bool
}

type procState struct {
	firstTicks, lastTicks uint64
	haveFirst             bool
	peakRSSKiB, hwmKiB    uint64
	samples               int
	err                   error
}

// NewProcSampler returns a sampler for procs.
func NewProcSampler(procs []Proc) *ProcSampler {
	return &ProcSampler{
		Interval: 250 * time.Millisecond,
		Root:     "/proc",
		procs:    append([]Proc(nil), procs...),
		state:    make([]procState, len(procs)),
	}
}

// Start takes the baseline sample and starts periodic sampling. It returns
// the first error reading any process, but keeps sampling the others.
func (s *ProcSampler) Start() error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("bench: ProcSampler already started")
	}
	s.started = true
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	s.mu.Unlock()
	err := s.Sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.Interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				s.Sample()
			case <-s.stop:
				return
			}
		}
	}()
	return err
}

// Sample reads every process once; Start and Stop call it, and so does
// the periodic sampling.
func (s *ProcSampler) Sample() error {
	var first error
	for i, p := range s.procs {
		u, err := procfs.ReadUsage(s.Root, p.PID)
		s.mu.Lock()
		st := &s.state[i]
		if err != nil {
			if st.err == nil {
				st.err = err
			}
			if first == nil {
				first = err
			}
			s.mu.Unlock()
			continue
		}
		if !st.haveFirst {
			st.firstTicks, st.haveFirst = u.Ticks, true
		}
		st.lastTicks = u.Ticks
		st.peakRSSKiB = max(st.peakRSSKiB, u.RSSKiB)
		st.hwmKiB = u.HWMKiB
		st.samples++
		s.mu.Unlock()
	}
	return first
}

// Stop takes a last sample, stops sampling and returns per-process
// figures; requests is the number of requests of the run, for
// CPUMicrosPerRequest. Stop on a sampler never started returns the
// processes with an error each.
func (s *ProcSampler) Stop(requests int64) []ProcStats {
	s.mu.Lock()
	started, stopped := s.started, s.stopped
	s.stopped = true
	s.mu.Unlock()
	if started && !stopped {
		close(s.stop)
		<-s.done
		s.Sample()
	}
	out := make([]ProcStats, len(s.procs))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.procs {
		st := s.state[i]
		ps := ProcStats{Name: p.Name, PID: p.PID, Samples: st.samples}
		if st.haveFirst {
			ps.CPUSeconds = float64(st.lastTicks-st.firstTicks) / procfs.ClockTicksPerSecond
			ps.PeakRSSMiB = round3(float64(st.peakRSSKiB) / 1024)
			ps.HWMRSSMiB = round3(float64(st.hwmKiB) / 1024)
			if requests > 0 {
				ps.CPUMicrosPerRequest = round3(ps.CPUSeconds * 1e6 / float64(requests))
			}
		}
		switch {
		case st.err != nil:
			ps.Error = st.err.Error()
		case !started:
			ps.Error = "not sampled"
		}
		out[i] = ps
	}
	return out
}
