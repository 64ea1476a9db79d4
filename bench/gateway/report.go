package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/quicmesh/quicmesh/bench"
)

// Result is what the command measured.
type Result struct {
	Machine Machine `json:"machine"`
	Config  config  `json:"config"`
	// GatewayIdleRSSKiB is the gateway's RSS once set up, before any load.
	GatewayIdleRSSKiB uint64  `json:"gateway_idle_rss_kib"`
	Latency           []*Load `json:"latency"`
	Capacity          []*Load `json:"capacity"`
	Tunnels           *Load   `json:"tunnels"`
	// TunnelsGatewayFlows is the gateway's relayed flows after the
	// tunnels phase: the tunnels are streams of the client sidecar's
	// one connection.
	TunnelsGatewayFlows float64      `json:"tunnels_gateway_flows"`
	Flows               *FlowsResult `json:"flows,omitempty"`
}

// Load is one run of the load generator.
type Load struct {
	Path         string        `json:"path"` // "direct" or "gateway"
	LoadAvgStart string        `json:"loadavg_start"`
	LoadAvgEnd   string        `json:"loadavg_end"`
	Result       *bench.Result `json:"result"`
}

// Machine describes where it ran.
type Machine struct {
	CPU  string `json:"cpu"`
	CPUs int    `json:"cpus"`
	Go   string `json:"go"`
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func (l *Load) proc(name string) bench.ProcStats {
	for _, p := range l.Result.Processes {
		if p.Name == name {
			return p
		}
	}
	return bench.ProcStats{}
}

func ms(us uint64) string { return fmt.Sprintf("%.2f", float64(us)/1000) }

func mib(kib uint64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

// writeMarkdown prints the tables of docs/benchmarks.md's gateway
// section.
func (r *Result) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Machine: %s, %d CPUs, %s.\n\n", r.Machine.CPU, r.Machine.CPUs, r.Machine.Go)
	if len(r.Latency) > 0 {
		fmt.Fprintf(w, "**Latency and CPU per request**, HTTP/1.1 GETs one at a time (a closed loop of one worker), %s per load after %s warmup:\n\n", r.Config.Duration, r.Config.Warmup)
		fmt.Fprintln(w, "| path | req/s | errors | p50 ms | p90 ms | p99 ms | client µs/req | gateway µs/req | server µs/req | mesh total µs/req | load1 |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for _, l := range r.Latency {
			writeHTTPRow(w, l)
		}
		fmt.Fprintln(w)
	}
	if len(r.Capacity) > 0 {
		fmt.Fprintf(w, "**Capacity**, HTTP/1.1 GET in a closed loop of %d workers, each on its own connection:\n\n", r.Config.Workers)
		fmt.Fprintln(w, "| path | req/s | errors | p50 ms | p90 ms | p99 ms | client µs/req | gateway µs/req | server µs/req | mesh total µs/req | load1 |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
		for _, l := range r.Capacity {
			writeHTTPRow(w, l)
		}
		fmt.Fprintln(w)
	}
	if t := r.Tunnels; t != nil {
		res := t.Result
		g, c, s := t.proc("gateway"), t.proc("client"), t.proc("server")
		fmt.Fprintf(w, "**%d TCP tunnels held at once** through the gateway, each echoing %d bytes once a second: %d round trips (%.0f/s), %d errors, p50 %s ms, p99 %s ms. "+
			"Gateway RSS %s MiB idle, peak %s MiB with the tunnels (%.0f relayed flow(s): the tunnels are streams of the client sidecar's connection); client sidecar peak %s MiB, server sidecar %s MiB. Load %s → %s.\n\n",
			res.Concurrency, res.PayloadBytes, res.Requests, res.RPS, res.ErrorTotal, ms(res.LatencyUS.P50), ms(res.LatencyUS.P99),
			mib(r.GatewayIdleRSSKiB), fmt.Sprintf("%.1f", g.PeakRSSMiB), r.TunnelsGatewayFlows, fmt.Sprintf("%.1f", c.PeakRSSMiB), fmt.Sprintf("%.1f", s.PeakRSSMiB),
			t.LoadAvgStart, t.LoadAvgEnd)
	}
	if f := r.Flows; f != nil && len(f.Steps) > 0 {
		fmt.Fprintln(w, "**Flows**: QUIC connections through the gateway, each from its own UDP socket and holding one tunnel:")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| connections opened | gateway flows | gateway RSS MiB | heap in use MiB | goroutines | load1 |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---|")
		for _, s := range f.Steps {
			fmt.Fprintf(w, "| %d | %.0f | %s | %.1f | %.0f | %s |\n", s.Flows, s.GatewayFlows, mib(s.RSSKiB), s.HeapInuse/(1<<20), s.Goroutines, s.LoadAvg)
		}
		fmt.Fprintf(w, "\nPer flow: %.1f KiB of RSS, %.1f KiB of heap (from the first row to the last). Dials retried: %d.\n", f.PerFlowRSSKiB, f.PerFlowHeapKiB, f.DialRetries)
	}
}

func writeHTTPRow(w io.Writer, l *Load) {
	res := l.Result
	c, g, s := l.proc("client"), l.proc("gateway"), l.proc("server")
	total := c.CPUMicrosPerRequest + s.CPUMicrosPerRequest
	gw := "–"
	if l.Path == "gateway" {
		total += g.CPUMicrosPerRequest
		gw = fmt.Sprintf("%.0f", g.CPUMicrosPerRequest)
	}
	fmt.Fprintf(w, "| %s | %.0f | %d | %s | %s | %s | %.0f | %s | %.0f | %.0f | %s→%s |\n", l.Path, res.RPS, res.ErrorTotal,
		ms(res.LatencyUS.P50), ms(res.LatencyUS.P90), ms(res.LatencyUS.P99), c.CPUMicrosPerRequest, gw, s.CPUMicrosPerRequest, total, l.LoadAvgStart, l.LoadAvgEnd)
}
