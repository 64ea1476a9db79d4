package scenario

import (
	"math"
	"testing"

	"github.com/quicmesh/quicmesh/bench"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1000}, 10},
	} {
		in := append([]float64(nil), c.in...)
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Fatalf("Median modified its input: %v", c.in)
			}
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(3, 2); got != 1.5 {
		t.Errorf("Ratio(3, 2) = %v", got)
	}
	for _, c := range [][2]float64{{0, 1}, {1, 0}, {math.NaN(), 1}, {1, math.Inf(1)}, {-1, 2}} {
		if !math.IsNaN(Ratio(c[0], c[1])) {
			t.Errorf("Ratio(%v, %v) is not NaN", c[0], c[1])
		}
	}
}

// result builds a bench result with the given figures and two sidecars.
func result(rps float64, p50, p99 uint64, errs map[string]int64, cpuA, cpuB, rssA, rssB float64) *bench.Result {
	r := &bench.Result{Schema: bench.SchemaVersion, RPS: rps, Requests: int64(rps * 10), Errors: errs,
		LatencyUS: bench.Latency{P50: p50, P90: p50 * 2, P99: p99, P999: p99 * 2, Max: p99 * 3, Mean: float64(p50)}}
	for _, n := range errs {
		r.ErrorTotal += n
	}
	if cpuA > 0 || cpuB > 0 {
		r.Processes = []bench.ProcStats{
			{Name: "quicmesh-a", PID: 1, CPUMicrosPerRequest: cpuA, PeakRSSMiB: rssA},
			{Name: "quicmesh-b", PID: 2, CPUMicrosPerRequest: cpuB, PeakRSSMiB: rssB},
		}
	}
	return r
}

func TestSummarize(t *testing.T) {
	runs := []Run{
		{Load: "l", Target: Direct, Round: 1, Result: result(1000, 100, 1000, nil, 0, 0, 0, 0)},
		{Load: "l", Target: Quicmesh, Round: 1, Result: result(300, 400, 9000, map[string]int64{"timeout": 2}, 100, 90, 18, 15)},
		{Load: "l", Target: Direct, Round: 2, Result: result(1200, 90, 800, nil, 0, 0, 0, 0)},
		{Load: "l", Target: Quicmesh, Round: 2, Result: result(500, 300, 5000, map[string]int64{"reset": 1, "timeout": 1}, 80, 70, 21, 14)},
		{Load: "l", Target: Direct, Round: 3, Result: result(900, 110, 1200, nil, 0, 0, 0, 0)},
		{Load: "l", Target: Quicmesh, Round: 3, Error: "quicmesh-a exited"},
		{Load: "l", Cond: "2% loss", Target: Quicmesh, Round: 1, Result: result(100, 1, 2, nil, 0, 0, 0, 0)},
	}
	sums := Summarize(runs)
	if len(sums) != 3 {
		t.Fatalf("got %d summaries, want 3: %+v", len(sums), sums)
	}
	d, ok := Find(sums, "l", "", Direct)
	if !ok || d.Rounds != 3 || d.OK != 3 || d.RPS != 1000 || d.P50 != 100 || d.P99 != 1000 {
		t.Errorf("direct summary wrong: %+v", d)
	}
	if !math.IsNaN(d.CPUPerReq) || len(d.RSS) != 0 || !math.IsNaN(d.MaxRSS()) {
		t.Errorf("direct has no sidecars, got CPU %v RSS %v", d.CPUPerReq, d.RSS)
	}
	q, ok := Find(sums, "l", "", Quicmesh)
	if !ok {
		t.Fatal("no quicmesh summary")
	}
	if q.Rounds != 3 || q.OK != 2 || len(q.Errs) != 1 || q.Errs[0] != "quicmesh-a exited" {
		t.Errorf("rounds: %+v", q)
	}
	if q.RPS != 400 || q.P50 != 350 || q.P99 != 7000 {
		t.Errorf("medians: rps %v p50 %v p99 %v", q.RPS, q.P50, q.P99)
	}
	if q.CPUPerReq != 170 { // median of 190 and 150
		t.Errorf("CPU per request = %v, want 170", q.CPUPerReq)
	}
	if q.Errors != 4 || q.ErrorKinds["timeout"] != 3 || q.ErrorKinds["reset"] != 1 {
		t.Errorf("errors: %d %v", q.Errors, q.ErrorKinds)
	}
	if len(q.RSS) != 2 || q.RSS[0] != (ProcRSS{"quicmesh-a", 21}) || q.RSS[1] != (ProcRSS{"quicmesh-b", 15}) || q.MaxRSS() != 21 {
		t.Errorf("RSS: %+v", q.RSS)
	}
	if q.Requests != 8000 || math.Abs(q.FailRate()-0.0005) > 1e-12 {
		t.Errorf("requests %d fail rate %v", q.Requests, q.FailRate())
	}
	if _, ok := Find(sums, "l", "2% loss", Quicmesh); !ok {
		t.Error("condition not kept apart")
	}
	if _, ok := Find(sums, "l", "", CaddyH3); ok {
		t.Error("found a summary for a target that did not run")
	}
}

func TestSummarizeFortio(t *testing.T) {
	f := &FortioResult{ActualQPS: 999.5, Count: 10000, Errors: 3, MaxUS: 900, MeanUS: 120,
		Percentiles: []FortioPercentle{{50, 100}, {90, 150}, {99, 400}, {99.9, 800}}}
	sums := Summarize([]Run{
		{Load: "x", Target: Direct, Tool: ToolFortio, Fortio: f},
		{Load: "x", Target: Direct, Result: result(1000, 110, 420, nil, 0, 0, 0, 0)},
	})
	fs, ok := FindTool(sums, "x", "", Direct, ToolFortio)
	if !ok || fs.RPS != 999.5 || fs.P50 != 100 || fs.P99 != 400 || fs.P999 != 800 || fs.Errors != 3 || fs.Requests != 10000 {
		t.Errorf("fortio summary: %+v", fs)
	}
	if o, ok := Find(sums, "x", "", Direct); !ok || o.P50 != 110 {
		t.Errorf("quicmesh bench summary mixed with fortio's: %+v", o)
	}
}
