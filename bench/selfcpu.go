package bench

import (
	"runtime"
	"sync"
	"time"
)

// GeneratorStats is the load generator's own CPU use over the measured
// window, so that a reader can tell when the generator, not the target,
// was the limit.
type GeneratorStats struct {
	// CPUSeconds is the user + system CPU time of the generator's process
	// (getrusage RUSAGE_SELF) between the start and the end of the
	// measured window.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUMicrosPerRequest is CPUSeconds in µs divided by the requests of
	// the window (0 when there were none).
	CPUMicrosPerRequest float64 `json:"cpu_us_per_request"`
	// Cores is CPUSeconds divided by the window's length: how many CPUs
	// the generator kept busy on average.
	Cores float64 `json:"cores"`
	// CPUs is the number of CPUs the generator could use (GOMAXPROCS).
	CPUs int `json:"cpus"`
}

// selfCPU records the process's CPU time at the start and the end of the
// measured window.
type selfCPU struct {
	mu         sync.Mutex
	start, end time.Duration
	started    bool
	ended      bool
	err        error
}

func (s *selfCPU) mark(end bool) {
	cpu, err := processCPU()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.err = err
	case !end && !s.started:
		s.start, s.started = cpu, true
	case end && s.started && !s.ended:
		s.end, s.ended = cpu, true
	}
}

// stats returns the figures for a window of d with requests requests, or
// nil if the CPU time could not be read or the window never started.
func (s *selfCPU) stats(d time.Duration, requests int64) *GeneratorStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || !s.started || !s.ended {
		return nil
	}
	g := &GeneratorStats{CPUSeconds: round3((s.end - s.start).Seconds()), CPUs: runtime.GOMAXPROCS(0)}
	if requests > 0 {
		g.CPUMicrosPerRequest = round3(float64(s.end-s.start) / float64(time.Microsecond) / float64(requests))
	}
	if d > 0 {
		g.Cores = round3((s.end - s.start).Seconds() / d.Seconds())
	}
	return g
}
