package scenario

import (
	"fmt"
	"math"
)

// Goal statuses.
const (
	GoalMet         = "met"
	GoalMissed      = "MISSED"
	GoalNotMeasured = "not measured"
)

// Goal is one target figure of the benchmark issue, checked against a run.
type Goal struct {
	Name     string
	Want     string
	Measured string
	Status   string
}

// Goals checks the targets against the summaries.
func Goals(sums []Summary, conds []Cond) []Goal {
	var gs []Goal
	add := func(name, want string, ok bool, measured bool, got string) {
		g := Goal{Name: name, Want: want, Measured: "–", Status: GoalNotMeasured}
		if measured {
			g.Measured = got
			g.Status = GoalMissed
			if ok {
				g.Status = GoalMet
			}
		}
		gs = append(gs, g)
	}
	get := func(load, cond, target string) (Summary, bool) {
		s, ok := Find(sums, load, cond, target)
		return s, ok && s.OK > 0
	}

	// Throughput against the haproxy HTTP/2 mTLS pair (issue 17).
	for _, l := range []struct{ id, what string }{{LoadHTTP1Max, "HTTP/1.1"}, {LoadGRPCMax, "gRPC unary"}} {
		q, ok1 := get(l.id, "", Quicmesh)
		h, ok2 := get(l.id, "", HAProxyH2)
		r := Ratio(q.RPS, h.RPS)
		add(l.what+" max throughput vs the haproxy HTTP/2 mTLS pair", "≥ 0.6× haproxy", r >= 0.6, ok1 && ok2 && !math.IsNaN(r),
			fmt.Sprintf("%s vs %s req/s = %s", fmtInt(q.RPS), fmtInt(h.RPS), fmtRatio(r)))
	}
	// Throughput against the Caddy HTTP/3 pair (the first benchmark issue).
	{
		q, ok1 := get(LoadHTTP1Max, "", Quicmesh)
		c, ok2 := get(LoadHTTP1Max, "", CaddyH3)
		r := Ratio(q.RPS, c.RPS)
		add("HTTP/1.1 max throughput vs the Caddy HTTP/3 pair", "≥ 2× Caddy", r >= 2, ok1 && ok2 && !math.IsNaN(r),
			fmt.Sprintf("%s vs %s req/s = %s", fmtInt(q.RPS), fmtInt(c.RPS), fmtRatio(r)))
	}
	// CPU per request, both sidecars (issue 17).
	for _, l := range []struct {
		id, what string
		max      float64
	}{{LoadHTTP1Rate, "at 1,000 req/s", 200}, {LoadHTTP1Max, "at max throughput", 60}} {
		q, ok := get(l.id, "", Quicmesh)
		cpu := q.CPUPerReq
		add("Proxy CPU per HTTP/1.1 request, both sidecars, "+l.what, fmt.Sprintf("≤ %.0f µs", l.max), cpu <= l.max, ok && !math.IsNaN(cpu),
			fmt.Sprintf("%s µs", fmtFloat1(cpu)))
	}
	// p99 at 1,000 req/s against Caddy.
	{
		q, ok1 := get(LoadHTTP1Rate, "", Quicmesh)
		c, ok2 := get(LoadHTTP1Rate, "", CaddyH3)
		r := Ratio(q.P99, c.P99)
		add("HTTP/1.1 p99 at 1,000 req/s vs Caddy", "≤ 0.5× Caddy", r <= 0.5, ok1 && ok2 && !math.IsNaN(r),
			fmt.Sprintf("%s vs %s µs = %s", fmtInt(q.P99), fmtInt(c.P99), fmtRatio(r)))
	}
	// Memory (issue 17).
	{
		q, ok := get(LoadHTTP1Rate, "", Quicmesh)
		m := q.MaxRSS()
		add("Peak RSS per sidecar at 1,000 req/s", "≤ 16 MiB", m <= 16, ok && !math.IsNaN(m),
			fmt.Sprintf("%s MiB (%s)", fmtFloat1(m), rssList(q.RSS)))
	}
	// One tunnel (issue 17).
	{
		q, ok := get(LoadTCPBulk, "", Quicmesh)
		gbps := q.BytesPerSec * 8 / 1e9
		add("One TCP tunnel, bulk echo throughput", "≥ 3 Gbit/s", gbps >= 3, ok && q.BytesPerSec > 0,
			fmt.Sprintf("%.2f Gbit/s", gbps))
	}
	// Loss.
	worst := ""
	for _, c := range conds {
		if c.LossPct == 2 && c.Delay == 0 {
			worst = c.Name
		}
	}
	for _, l := range []struct{ id, what string }{{LoadLossyGRPC, "50 gRPC streams"}, {LoadLossyTCP, "50 TCP flows"}} {
		q, ok1 := get(l.id, worst, Quicmesh)
		s, ok2 := get(l.id, worst, Stunnel)
		r := Ratio(q.P99, s.P99)
		add("2% loss, "+l.what+": p99 vs stunnel, and no failed requests", "≤ 0.5× stunnel, 0 failed",
			r <= 0.5 && q.Errors == 0, worst != "" && ok1 && ok2 && !math.IsNaN(r),
			fmt.Sprintf("%s vs %s µs = %s; %d failed of %s", fmtInt(q.P99), fmtInt(s.P99), fmtRatio(r), q.Errors, fmtInt(float64(q.Requests))))
	}
	return gs
}

func rssList(rs []ProcRSS) string {
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %s", r.Name, fmtFloat1(r.MiB))
	}
	return s
}
