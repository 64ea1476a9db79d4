package scenario

import (
	"math"
	"sort"
)

// Median returns the median of xs (the mean of the middle two for an even
// count), or NaN for none. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio returns a/b, or NaN when either is not a positive finite number.
func Ratio(a, b float64) float64 {
	if !(a > 0) || !(b > 0) || math.IsInf(a, 0) || math.IsInf(b, 0) {
		return math.NaN()
	}
	return a / b
}

// ProcRSS is the peak RSS of one sampled process across the rounds.
type ProcRSS struct {
	Name string  `json:"name"`
	MiB  float64 `json:"mib"` // largest peak_rss_mib of any round
}

// Summary aggregates the rounds of one (load, condition, target).
type Summary struct {
	Load   string `json:"load"`
	Cond   string `json:"cond,omitempty"`
	Target string `json:"target"`
	Tool   string `json:"tool,omitempty"`
	// Rounds is the number of runs, OK those that produced a result.
	Rounds, OK int
	// Medians over the rounds with a result.
	RPS, P50, P90, P99, P999, Max, Mean float64
	BytesPerSec                         float64
	// LagP50 and LagP99 are the medians of the load generator's own send
	// lag (open loop only; NaN otherwise): how late requests left
	// relative to their intended send time. It is part of the latency.
	LagP50, LagP99 float64
	// RPSMin and RPSMax are the lowest and highest rate of the rounds.
	RPSMin, RPSMax float64
	// OtherCores is the most CPU other processes used during a round.
	OtherCores float64
	// CPUPerReq is the median over rounds of the sum over the sampled
	// proxy processes of CPU µs per request (NaN if none were sampled).
	CPUPerReq float64
	// GenCPUPerReq is the median over rounds of the load generator's own
	// CPU µs per request (NaN if unknown): quicmesh bench's over its
	// measured window, fortio's over its whole process.
	GenCPUPerReq float64
	// Sums over rounds.
	Requests, Errors, Unsent int64
	// ErrorKinds sums the failed requests by kind.
	ErrorKinds map[string]int64
	// RSS per sampled process (largest over rounds).
	RSS []ProcRSS
	// Errs are the errors of runs that produced no result.
	Errs []string
}

// MaxRSS is the largest RSS of any sampled process (NaN if none).
func (s Summary) MaxRSS() float64 {
	m := math.NaN()
	for _, p := range s.RSS {
		if math.IsNaN(m) || p.MiB > m {
			m = p.MiB
		}
	}
	return m
}

// FailRate is the share of failed requests (0..1), NaN without requests.
func (s Summary) FailRate() float64 {
	if s.Requests == 0 {
		return math.NaN()
	}
	return float64(s.Errors) / float64(s.Requests)
}

type summaryKey struct{ load, cond, target, tool string }

// Summarize groups runs by (load, condition, target, tool), in order of
// first appearance, and computes medians over rounds.
func Summarize(runs []Run) []Summary {
	var order []summaryKey
	groups := map[summaryKey][]Run{}
	for _, r := range runs {
		k := summaryKey{r.Load, r.Cond, r.Target, r.Tool}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Summary, 0, len(order))
	for _, k := range order {
		out = append(out, summarize(k, groups[k]))
	}
	return out
}

func summarize(k summaryKey, runs []Run) Summary {
	s := Summary{Load: k.load, Cond: k.cond, Target: k.target, Tool: k.tool, Rounds: len(runs)}
	var rps, p50, p90, p99, p999, mx, mean, bps, cpu, gen, lag50, lag99 []float64
	rss := map[string]float64{}
	var rssOrder []string
	s.RPSMin, s.RPSMax = math.NaN(), math.NaN()
	for _, r := range runs {
		s.OtherCores = math.Max(s.OtherCores, r.OtherCores)
		switch {
		case r.Result != nil:
			res := r.Result
			s.OK++
			rps = append(rps, res.RPS)
			l := res.LatencyUS
			p50 = append(p50, float64(l.P50))
			p90 = append(p90, float64(l.P90))
			p99 = append(p99, float64(l.P99))
			p999 = append(p999, float64(l.P999))
			mx = append(mx, float64(l.Max))
			mean = append(mean, l.Mean)
			bps = append(bps, res.BytesPerSecond)
			if g := res.Generator; g != nil && res.Requests > 0 {
				gen = append(gen, g.CPUMicrosPerRequest)
			}
			if res.SendLagUS != nil {
				lag50 = append(lag50, float64(res.SendLagUS.P50))
				lag99 = append(lag99, float64(res.SendLagUS.P99))
			}
			s.Requests += res.Requests
			s.Errors += res.ErrorTotal
			s.Unsent += res.Unsent
			for kind, n := range res.Errors {
				if s.ErrorKinds == nil {
					s.ErrorKinds = map[string]int64{}
				}
				s.ErrorKinds[kind] += n
			}
			if len(res.Processes) > 0 {
				sum := 0.0
				for _, p := range res.Processes {
					sum += p.CPUMicrosPerRequest
					if _, ok := rss[p.Name]; !ok {
						rssOrder = append(rssOrder, p.Name)
					}
					rss[p.Name] = math.Max(rss[p.Name], p.PeakRSSMiB)
				}
				cpu = append(cpu, sum)
			}
		case r.Fortio != nil:
			f := r.Fortio
			s.OK++
			rps = append(rps, f.ActualQPS)
			p50 = append(p50, f.Percentile(50))
			p90 = append(p90, f.Percentile(90))
			p99 = append(p99, f.Percentile(99))
			p999 = append(p999, f.Percentile(99.9))
			mx = append(mx, f.MaxUS)
			mean = append(mean, f.MeanUS)
			s.Requests += f.Count
			s.Errors += f.Errors
			if r.ToolCPUSeconds > 0 && f.Count > 0 {
				gen = append(gen, r.ToolCPUSeconds*1e6/float64(f.Count))
			}
		default:
			s.Errs = append(s.Errs, r.Error)
		}
	}
	s.RPS, s.P50, s.P90, s.P99, s.P999 = Median(rps), Median(p50), Median(p90), Median(p99), Median(p999)
	s.Max, s.Mean, s.BytesPerSec, s.CPUPerReq = Median(mx), Median(mean), Median(bps), Median(cpu)
	s.LagP50, s.LagP99 = Median(lag50), Median(lag99)
	s.GenCPUPerReq = Median(gen)
	for _, x := range rps {
		if math.IsNaN(s.RPSMin) || x < s.RPSMin {
			s.RPSMin = x
		}
		if math.IsNaN(s.RPSMax) || x > s.RPSMax {
			s.RPSMax = x
		}
	}
	for _, n := range rssOrder {
		s.RSS = append(s.RSS, ProcRSS{Name: n, MiB: rss[n]})
	}
	return s
}

// Find returns the summary for (load, cond, target) with the default tool.
func Find(sums []Summary, load, cond, target string) (Summary, bool) {
	return FindTool(sums, load, cond, target, "")
}

// FindTool returns the summary for (load, cond, target, tool).
func FindTool(sums []Summary, load, cond, target, tool string) (Summary, bool) {
	for _, s := range sums {
		if s.Load == load && s.Cond == cond && s.Target == target && s.Tool == tool {
			return s, true
		}
	}
	return Summary{}, false
}
