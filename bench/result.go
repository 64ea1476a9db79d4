package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// SchemaVersion identifies the JSON schema of Result (see SCHEMA.md).
const SchemaVersion = "quicmesh.bench/v1"

// Result is the outcome of one run. Its JSON form is the stable schema
// documented in SCHEMA.md; fields are only ever added to it.
type Result struct {
	Schema         string           `json:"schema"`
	Proto          string           `json:"proto"`
	Target         string           `json:"target"`
	Model          string           `json:"model"`  // "open" or "closed"
	Pacing         string           `json:"pacing"` // "uniform" (open) or "none" (closed)
	Rate           float64          `json:"rate"`   // requests/s asked for; 0 in the closed loop
	Concurrency    int              `json:"concurrency"`
	Connections    int              `json:"connections"`
	PayloadBytes   int              `json:"payload_bytes"`
	TimeoutS       float64          `json:"timeout_s"`
	WarmupS        float64          `json:"warmup_s"`
	DurationS      float64          `json:"duration_s"`
	Requests       int64            `json:"requests"`
	Errors         map[string]int64 `json:"errors"`
	ErrorTotal     int64            `json:"error_total"`
	Unsent         int64            `json:"unsent"`
	RPS            float64          `json:"rps"`
	LatencyUS      Latency          `json:"latency_us"`
	SendLagUS      *Latency         `json:"send_lag_us,omitempty"`
	BytesPerSecond float64          `json:"bytes_per_second"`
	Processes      []ProcStats      `json:"processes,omitempty"`
	// Generator is nil where the process's CPU time cannot be read.
	Generator *GeneratorStats `json:"generator,omitempty"`

	bytes int64
}

// GeneratorBusy is the share of its CPUs above which the table warns that
// the generator itself may have been the limit of the run.
const GeneratorBusy = 0.75

// Latency summarizes the latency histogram of successful requests, in
// microseconds.
type Latency struct {
	P50  uint64  `json:"p50"`
	P90  uint64  `json:"p90"`
	P99  uint64  `json:"p99"`
	P999 uint64  `json:"p999"`
	Max  uint64  `json:"max"`
	Mean float64 `json:"mean"`
}

func newResult(cfg Config) *Result {
	r := &Result{
		Schema:       SchemaVersion,
		Proto:        cfg.Proto,
		Target:       cfg.Target,
		Model:        "closed",
		Pacing:       "none",
		Rate:         cfg.Rate,
		Concurrency:  cfg.Concurrency,
		Connections:  cfg.Connections,
		PayloadBytes: cfg.Payload,
		TimeoutS:     cfg.Timeout.Seconds(),
		WarmupS:      cfg.Warmup.Seconds(),
		Errors:       map[string]int64{},
	}
	if cfg.Rate > 0 {
		r.Model, r.Pacing = "open", "uniform"
	}
	return r
}

func (r *Result) addBytes(n int64) { r.bytes += n }

// finish sets the window length and the derived figures.
func (r *Result) finish(d time.Duration, h *Histogram) {
	r.DurationS = d.Seconds()
	if d > 0 {
		r.RPS = round3(float64(r.Requests) / d.Seconds())
		r.BytesPerSecond = round3(float64(r.bytes) / d.Seconds())
	}
	r.LatencyUS = *summarize(h)
}

func summarize(h *Histogram) *Latency {
	return &Latency{
		P50:  h.Quantile(0.50),
		P90:  h.Quantile(0.90),
		P99:  h.Quantile(0.99),
		P999: h.Quantile(0.999),
		Max:  h.Max(),
		Mean: round3(h.Mean()),
	}
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// JSON returns the result as indented JSON followed by a newline.
func (r *Result) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteTable writes a human-readable summary of r.
func (r *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	model := "closed loop"
	if r.Model == "open" {
		model = fmt.Sprintf("open loop, %s pacing at %s req/s", r.Pacing, fmtFloat(r.Rate))
	}
	fmt.Fprintf(&b, "quicmesh bench: %s %s (%s)\n", r.Proto, r.Target, model)
	fmt.Fprintf(&b, "  concurrency %d, connections %d, payload %d B, warmup %s, duration %s\n",
		r.Concurrency, r.Connections, r.PayloadBytes, fmtSeconds(r.WarmupS), fmtSeconds(r.DurationS))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\trequests\trps\terrors\tunsent\t\n")
	fmt.Fprintf(tw, "\t%d\t%s\t%d\t%d\t\n", r.Requests, fmtFloat(r.RPS), r.ErrorTotal, r.Unsent)
	tw.Flush()
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	l := r.LatencyUS
	fmt.Fprintf(tw, "\tlatency µs\tp50\tp90\tp99\tp99.9\tmax\tmean\t\n")
	fmt.Fprintf(tw, "\t\t%d\t%d\t%d\t%d\t%d\t%s\t\n", l.P50, l.P90, l.P99, l.P999, l.Max, fmtFloat(l.Mean))
	tw.Flush()
	if r.BytesPerSecond > 0 {
		fmt.Fprintf(&b, "  throughput %s/s\n", fmtBytes(r.BytesPerSecond))
	}
	if len(r.Errors) > 0 {
		b.WriteString("  errors:")
		for _, k := range sortedKeys(r.Errors) {
			fmt.Fprintf(&b, " %s=%d", k, r.Errors[k])
		}
		b.WriteString("\n")
	}
	if g := r.Generator; g != nil {
		fmt.Fprintf(&b, "  generator CPU %.3f s, %s µs/request, %s of %d CPUs busy\n", g.CPUSeconds, fmtFloat(g.CPUMicrosPerRequest), fmtFloat(g.Cores), g.CPUs)
		if g.CPUs > 0 && g.Cores >= GeneratorBusy*float64(g.CPUs) {
			b.WriteString("  (the generator kept most of its CPUs busy: the figures may be its limit, not the target's)\n")
		}
	}
	if len(r.Processes) > 0 {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "\tprocess\tpid\tcpu s\tcpu µs/req\tpeak RSS MiB\t\n")
		for _, p := range r.Processes {
			note := ""
			if p.Error != "" {
				note = "  (" + p.Error + ")"
			}
			fmt.Fprintf(tw, "\t%s\t%d\t%.3f\t%s\t%s\t%s\n", p.Name, p.PID, p.CPUSeconds,
				fmtFloat(p.CPUMicrosPerRequest), fmtFloat(p.PeakRSSMiB), note)
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func fmtFloat(x float64) string {
	switch {
	case x == math.Trunc(x) && math.Abs(x) < 1e15:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 100:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.3g", x)
	}
}

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

func fmtBytes(x float64) string {
	const unit = 1024
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for x >= unit && i < len(units)-1 {
		x /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", x, units[i])
}
