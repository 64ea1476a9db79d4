package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
)

// Phase is the control plane's usage over one phase of the run.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	// CPUSeconds is utime+stime over the phase; CPUPercent the same per
	// second of the phase (100 = one core busy).
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent"`
	// RSSMiB is VmRSS at the phase's end, PeakRSSMiB the largest VmRSS
	// sampled (every 100 ms) during it, HWMMiB VmHWM at its end (the
	// process's peak so far, between samples too).
	RSSMiB     float64 `json:"rss_mib"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	HWMMiB     float64 `json:"hwm_mib"`
	// Load1Start and Load1End are the machine's 1-minute load average:
	// the machine is shared, and the figures mean little without it.
	Load1Start float64 `json:"load1_start"`
	Load1End   float64 `json:"load1_end"`
}

// ChurnStats is what the sidecars saw of the churn.
type ChurnStats struct {
	Changes     int     `json:"changes"`
	RatePerSec  float64 `json:"rate_per_second"`
	Deliveries  int     `json:"deliveries"`
	Undelivered int     `json:"undelivered"`
	// APIWrite is the EndpointSlice Update call's own time.
	APIWrite Quantiles `json:"api_write"`
	// Delivery is each (change, watching stream) pair: from just before
	// the Update call to the stream's message carrying it.
	Delivery Quantiles `json:"delivery"`
	// AllWatchers is per change that some stream follows: until the
	// last stream that follows the service (every WatchIndex, and its
	// Watch streams) had it.
	AllWatchers Quantiles `json:"all_watchers"`
	// CPUMillisPerChange is the control plane's CPU during the churn
	// phase divided by the changes.
	CPUMillisPerChange float64 `json:"cpu_ms_per_change"`
}

// Quantiles of durations, in milliseconds.
type Quantiles struct {
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	N   int     `json:"n"`
}

func quantiles(ds []time.Duration) Quantiles {
	if len(ds) == 0 {
		return Quantiles{}
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return Quantiles{P50: ms(ds[(len(ds)-1)/2]), P99: ms(ds[(len(ds)*99+99)/100-1]), Max: ms(ds[len(ds)-1]), N: len(ds)}
}

// Result is a run's outcome.
type Result struct {
	Config             Config      `json:"config"`
	Cores              int         `json:"cores"`
	PopulateSeconds    float64     `json:"populate_seconds"`
	SyncSeconds        float64     `json:"sync_seconds"`
	IndexSnapshotBytes int64       `json:"index_snapshot_bytes"`
	Phases             []Phase     `json:"phases"`
	Churn              *ChurnStats `json:"churn"`
}

// Print writes the result as the tables of docs/benchmarks.md.
func (r *Result) Print(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "quicmesh-control: %d services × %d endpoints (%d pods), %d sidecars (WatchIndex %v, %d Watch each), %d cores\n",
		c.Services, c.Endpoints, c.Services*c.Endpoints, c.Sidecars, c.Index, c.WatchesPerSidecar, r.Cores)
	fmt.Fprintf(w, "objects created in %.1f s; control plane serving %.2f s after exec; WatchIndex snapshot %d bytes\n\n",
		r.PopulateSeconds, r.SyncSeconds, r.IndexSnapshotBytes)
	fmt.Fprintln(w, "| phase | seconds | CPU s | CPU % of a core | RSS MiB (end) | peak RSS MiB | VmHWM MiB | load1 start→end |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, p := range r.Phases {
		fmt.Fprintf(w, "| %s | %.1f | %.2f | %.1f | %.0f | %.0f | %.0f | %.1f→%.1f |\n",
			p.Name, p.Seconds, p.CPUSeconds, p.CPUPercent, p.RSSMiB, p.PeakRSSMiB, p.HWMMiB, p.Load1Start, p.Load1End)
	}
	if ch := r.Churn; ch != nil {
		fmt.Fprintf(w, "\nchurn: %d EndpointSlice updates at %.1f/s, %d deliveries, %d undelivered, %.2f ms control-plane CPU per change\n",
			ch.Changes, ch.RatePerSec, ch.Deliveries, ch.Undelivered, ch.CPUMillisPerChange)
		fmt.Fprintln(w, "| from the Update call to | p50 ms | p99 ms | max ms | n |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: |")
		for _, q := range []struct {
			name string
			q    Quantiles
		}{{"the API server's answer", ch.APIWrite}, {"each watching stream's message", ch.Delivery}, {"the last watching stream's message", ch.AllWatchers}} {
			fmt.Fprintf(w, "| %s | %.1f | %.1f | %.1f | %d |\n", q.name, q.q.P50, q.q.P99, q.q.Max, q.q.N)
		}
	}
}

// sampler reads the control plane's RSS every 100 ms, for the peaks.
type sampler struct {
	pid  int
	stop chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	peak uint64 // KiB since the last reset
}

func newSampler(pid int) *sampler {
	s := &sampler{pid: pid, stop: make(chan struct{})}
	s.wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if u, err := procfs.ReadUsage("/proc", pid); err == nil {
				s.mu.Lock()
				s.peak = max(s.peak, u.RSSKiB)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	})
	return s
}

func (s *sampler) close() {
	close(s.stop)
	s.wg.Wait()
}

// phase runs fn and returns the control plane's usage over it. It returns
// the Phase even when fn fails, as long as the process could be read.
func (s *sampler) phase(name string, fn func() error) (*Phase, error) {
	before, err := procfs.ReadUsage("/proc", s.pid)
	if err != nil {
		return nil, fmt.Errorf("controlplane: reading the control plane's usage: %w", err)
	}
	s.mu.Lock()
	s.peak = before.RSSKiB
	s.mu.Unlock()
	p := &Phase{Name: name, Load1Start: load1()}
	start := time.Now()
	fnErr := fn()
	p.Seconds = time.Since(start).Seconds()
	after, err := procfs.ReadUsage("/proc", s.pid)
	if err != nil {
		return nil, errors.Join(fnErr, fmt.Errorf("controlplane: reading the control plane's usage (did it exit?): %w", err))
	}
	s.mu.Lock()
	peak := max(s.peak, after.RSSKiB)
	s.mu.Unlock()
	p.Load1End = load1()
	p.CPUSeconds = ticksToSeconds(after.Ticks - before.Ticks)
	p.CPUPercent = 100 * p.CPUSeconds / p.Seconds
	p.RSSMiB, p.PeakRSSMiB, p.HWMMiB = kib(after.RSSKiB), kib(peak), kib(after.HWMKiB)
	return p, fnErr
}

func ticksToSeconds(t uint64) float64 { return float64(t) / procfs.ClockTicksPerSecond }
func kib(k uint64) float64            { return float64(k) / 1024 }
func numCPU() int                     { return runtime.NumCPU() }

// load1 is the 1-minute load average (0 if unreadable).
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
