package scenario

import (
	"encoding/json"
	"encoding/xml"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

// fakeResults is a complete run of the default plan with made-up figures:
// quicmesh meets some goals and misses others.
func fakeResults() *Results {
	p := DefaultPlan()
	res := &Results{Schema: ResultsSchema, Command: "make bench", Loads: p.Loads, Conds: p.Conds,
		Started:  time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC),
		Finished: time.Date(2026, 11, 22, 3, 14, 30, 0, time.UTC),
		Machine: Machine{CPUs: 2, CPUModel: "Test CPU", MemMiB: 24000, Kernel: "6.1", Go: "go1.26.8", Commit: "abc1234",
			Versions: map[string]string{"caddy": "v2.11.9", "haproxy": "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"}},
		Notes:     []string{"Delay note with `code`."},
		LinkStats: []LinkStat{{Load: LoadLossyTCP, Cond: "2% loss", LossDrops: 1234}, {Load: LoadLossyTCP, Cond: "10 ms delay", EmuForwarded: 99}},
	}
	rps := map[string]float64{Direct: 40000, Quicmesh: 8000, QuicmeshTCP: 9000, CaddyH3: 3000, HAProxyH2: 17000, Stunnel: 13000}
	p99 := map[string]uint64{Direct: 500, Quicmesh: 2000, QuicmeshTCP: 1800, CaddyH3: 5000, HAProxyH2: 1500, Stunnel: 1200}
	add := func(load, cond, target string, round int, r *bench.Result) {
		res.Runs = append(res.Runs, Run{Load: load, Cond: cond, Target: target, Round: round, Result: r,
			Command: "bin/quicmesh bench --proto x --target " + target, OtherCores: 0.1 * float64(round)})
	}
	for _, l := range p.Loads {
		for round := 1; round <= 3; round++ {
			switch l.Group {
			case GroupLoopback:
				for _, tg := range l.Targets {
					if tg == CaddyH3 && l.ID == LoadGRPCRate {
						res.Runs = append(res.Runs, Run{Load: l.ID, Target: tg, Round: round, Error: "caddy-a exited: boom | pipe"})
						continue
					}
					cpu := 0.0
					if tg != Direct {
						cpu = 60
					}
					r := result(rps[tg]*(1+0.01*float64(round)), p99[tg]/4, p99[tg], nil, cpu, cpu, 12, 11)
					r.BytesPerSecond = rps[tg] * 1000
					if l.Open() {
						r.RPS = 1000
						r.SendLagUS = &bench.Latency{P50: 40, P99: 700}
					}
					if tg == Quicmesh && l.ID == LoadHTTP1Rate {
						r.Processes[0].PeakRSSMiB = 24
					}
					add(l.ID, "", tg, round, r)
				}
			case GroupLossy:
				if round > 1 {
					continue
				}
				for _, c := range p.Conds {
					for _, tg := range l.Targets {
						f := 1.0
						if c.LossPct == 2 && tg == Stunnel {
							f = 100
						}
						errs := map[string]int64(nil)
						if tg == Quicmesh && l.ID == LoadLossyTCP && c.LossPct == 2 {
							errs = map[string]int64{"timeout": 1}
						}
						add(l.ID, c.Name, tg, round, result(1000, 300, uint64(2000*f), errs, 0, 0, 0, 0))
					}
				}
			case GroupCrossCheck:
				if round > 1 {
					continue
				}
				add(l.ID, "", Direct, 1, result(1000, 150, 420, nil, 0, 0, 0, 0))
				res.Runs[len(res.Runs)-1].Result.Generator = &bench.GeneratorStats{CPUSeconds: 0.2, CPUMicrosPerRequest: 20, Cores: 0.02, CPUs: 2}
				res.Runs = append(res.Runs, Run{Load: l.ID, Target: Direct, Round: 1, Tool: ToolFortio, Command: "fortio load -qps 1000", ToolCPUSeconds: 0.39996,
					Fortio: &FortioResult{ActualQPS: 999.9, Count: 9999, Percentiles: []FortioPercentle{{50, 140}, {90, 200}, {99, 400}, {99.9, 900}}, MaxUS: 1000}})
			}
		}
	}
	return res
}

func TestGoals(t *testing.T) {
	res := fakeResults()
	gs := Goals(Summarize(res.Runs), res.Conds)
	status := map[string]string{}
	for _, g := range gs {
		status[g.Name] = g.Status
		if g.Status == GoalNotMeasured && g.Measured != "–" {
			t.Errorf("%s: not measured but shows %q", g.Name, g.Measured)
		}
		if strings.Contains(g.Measured, "NaN") {
			t.Errorf("%s: %q", g.Name, g.Measured)
		}
	}
	want := map[string]string{
		"HTTP/1.1 max throughput vs the Caddy HTTP/3 pair":                 GoalMet,    // 8000 vs 3000
		"HTTP/1.1 max throughput vs the haproxy HTTP/2 mTLS pair":          GoalMissed, // 8000 vs 17000
		"gRPC unary max throughput vs the haproxy HTTP/2 mTLS pair":        GoalMissed, // likewise
		"Proxy CPU per HTTP/1.1 request, both sidecars, at 1,000 req/s":    GoalMet,    // 120 µs
		"HTTP/1.1 p99 at 1,000 req/s vs Caddy":                             GoalMet,    // 2000 vs 5000
		"Peak RSS per sidecar at 1,000 req/s":                              GoalMissed, // 24 MiB
		"One TCP tunnel, bulk echo throughput":                             GoalMissed, // 64 Mbit/s
		"2% loss, 50 gRPC streams: p99 vs stunnel, and no failed requests": GoalMet,
		"2% loss, 50 TCP flows: p99 vs stunnel, and no failed requests":    GoalMissed, // one timeout
		"Proxy CPU per HTTP/1.1 request, both sidecars, at max throughput": GoalMissed, // 120 µs
	}
	for name, st := range want {
		if status[name] != st {
			t.Errorf("%s: status %q, want %q", name, status[name], st)
		}
	}
	if len(gs) != len(want) {
		t.Errorf("%d goals, want %d", len(gs), len(want))
	}
	// Nothing measured: every goal says so.
	for _, g := range Goals(nil, nil) {
		if g.Status != GoalNotMeasured {
			t.Errorf("%s: %s without data", g.Name, g.Status)
		}
	}
}

func TestCompareCross(t *testing.T) {
	mk := func(ours, fortio [2]float64) []Summary {
		return []Summary{
			{Load: "c", Target: Direct, OK: 1, Rounds: 1, P50: ours[0], P99: ours[1]},
			{Load: "c", Target: Direct, Tool: ToolFortio, OK: 1, Rounds: 1, P50: fortio[0], P99: fortio[1]},
		}
	}
	c, ok := CompareCross(mk([2]float64{110, 1100}, [2]float64{100, 1000}), "c")
	if !ok || !c.Agree || math.Abs(c.P50Diff-0.1) > 1e-9 || math.Abs(c.P99Diff-0.1) > 1e-9 {
		t.Errorf("10%% apart: %+v", c)
	}
	c, ok = CompareCross(mk([2]float64{100, 1200}, [2]float64{100, 1000}), "c")
	if !ok || c.Agree {
		t.Errorf("p99 20%% apart counted as agreement: %+v", c)
	}
	if !strings.Contains(crossGapNote(c), "higher") {
		t.Errorf("gap note: %s", crossGapNote(c))
	}
	sums := mk([2]float64{900, 3000}, [2]float64{150, 400})
	sums[0].LagP50, sums[0].LagP99 = 600, 1000
	c, _ = CompareCross(sums, "c")
	note := crossGapNote(c)
	mustContain(t, "gap note", note, "p50 is higher (900 vs 150 µs); its own send lag p50 was 600 µs, most of the 750 µs gap",
		"send lag p99 was 1,000 µs, less than half of the 2,600 µs gap")
	if _, ok := CompareCross(mk([2]float64{1, 1}, [2]float64{1, 1})[:1], "c"); ok {
		t.Error("compared without fortio")
	}
}

func TestRenderMarkdown(t *testing.T) {
	md := RenderMarkdown(fakeResults())
	mustContain(t, "markdown", md,
		"Generated by `make bench`", "2026-11-22 03:00 UTC", "14m30s",
		"2 vCPU (Test CPU)", "caddy v2.11.9", "haproxy 2.6.12-1+deb12u4", "quicmesh abc1234",
		"### Goals", "| Peak RSS per sidecar at 1,000 req/s | ≤ 16 MiB | 24.0 MiB", "**MISSED**",
		"### HTTP/1.1 maximum throughput", "| quicmesh | mTLS QUIC, HTTP/3 |", "| quicmesh-tcp | HTTP/2 mTLS over TCP (quicmesh's fallback transport) |", "| quicmesh | mTLS QUIC, one stream per TCP connection |",
		"### TCP bulk throughput, one connection", "### 50 TCP flows over a lossy link", "| 2% loss | stunnel |", "| 2% loss | quicmesh-tcp |",
		"2% loss: 1,234 dropped", "99 forwarded by the emulator",
		"### Cross-check: fortio vs quicmesh bench", "| fortio | 1,000 | 140 |", "the tools agree within 15 %",
		"Exact commands", "```sh\nbin/quicmesh bench --proto x --target direct\n",
		"failed: caddy-a exited: boom \\| pipe", "### Notes", "- Delay note with `code`.",
		"| generator send lag p50 / p99 µs |", "| 40 / 700 |", "own send lag",
		"| 8,160 (8,080–8,240) |", "used at most 0.30 CPU cores during any of these runs", "in 28 of 128 runs",
		"### Cross-check: fortio vs quicmesh bench, direct, maximum throughput", "quicmesh bench / fortio achieved rate: **1.00×**", "at least as fast as fortio", "| generator CPU µs/req |",
		"| quicmesh bench | 1,000 | 150 | 300 | 420 | 840 | 1,260 | – | 20.0 | 0 |", "Generator CPU per request, quicmesh bench / fortio: **0.50×**")
	mustNotContain(t, "markdown", md, "NaN", "%!", "<nil>", BeginMarker, EndMarker)
	// Every table row has as many cells as its header.
	var cols int
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			cols = 0
			continue
		}
		n := strings.Count(strings.ReplaceAll(line, `\|`, ""), "|")
		if cols == 0 {
			cols = n
		} else if n != cols {
			t.Errorf("row has %d separators, header %d: %s", n, cols, line)
		}
	}
	// The section goes into docs/benchmarks.md, whose own headings are
	// level 2: ours start at level 3.
	if regexp.MustCompile(`(?m)^#{1,2} `).MatchString(md) {
		t.Error("markdown has a heading above level 3")
	}
}

func TestRenderMarkdownQuickAndEmpty(t *testing.T) {
	res := fakeResults()
	res.Quick = true
	mustContain(t, "quick markdown", RenderMarkdown(res), "quick smoke run")
	empty := RenderMarkdown(&Results{Command: "x"})
	mustContain(t, "empty markdown", empty, "### Goals", "not measured")
	mustNotContain(t, "empty markdown", empty, "NaN", "### HTTP/1.1")
}

func TestRenderHTML(t *testing.T) {
	b, err := RenderHTML(fakeResults())
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	mustContain(t, "html", page, "<!DOCTYPE html>", "<svg", "<polyline", "<rect", "class=\"missed\"",
		"<h2 id=\"http1-max\">", "<h2 id=\"lossy-tcp\">", "<h2 id=\"crosscheck-http1\">", "<code>make bench</code>",
		"fortio vs quicmesh bench: latency percentiles", "<details>", "</html>")
	// Self-contained: no scripts or styles or images from anywhere else.
	mustNotContain(t, "html", page, "<script src", "<link", "<img", "@import", "url(", "NaN")
	for _, m := range regexp.MustCompile(`(?:href|src)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		if !strings.HasPrefix(m[1], "#") {
			t.Errorf("external reference %q", m[1])
		}
	}
	// Every chart is well-formed XML.
	svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(page, -1)
	if len(svgs) < 10 {
		t.Errorf("only %d charts", len(svgs))
	}
	for _, s := range svgs {
		d := xml.NewDecoder(strings.NewReader(s))
		for {
			_, err := d.Token()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("chart is not well-formed XML: %v\n%s", err, s)
				}
				break
			}
		}
	}
	// Text is escaped.
	res := fakeResults()
	res.Notes = []string{"<script>alert(1)</script>"}
	b, _ = RenderHTML(res)
	if strings.Contains(string(b), "<script>") {
		t.Error("note not escaped")
	}
}

// jsonRoundTrip returns res as read back from its JSON (results.json).
func jsonRoundTrip(t *testing.T, res *Results) *Results {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	return &back
}

func TestResultsJSONRoundTrip(t *testing.T) {
	res := fakeResults()
	if RenderMarkdown(jsonRoundTrip(t, res)) != RenderMarkdown(res) {
		t.Error("the report rendered from results.json differs from the original")
	}
}

func TestFormatting(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567", -1500: "-1,500", math.NaN(): "–"} {
		if got := fmtInt(in); got != want {
			t.Errorf("fmtInt(%v) = %q, want %q", in, got, want)
		}
	}
	if fmtRatio(0.4567) != "0.46×" || fmtRatio(15.2) != "15×" || fmtRatio(math.NaN()) != "–" {
		t.Error("fmtRatio")
	}
	if fmtLatency(1500) != "1.5 ms" || fmtLatency(2e6) != "2 s" || fmtLatency(50) != "50 µs" {
		t.Error("fmtLatency")
	}
	for in, want := range map[string]string{
		"HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/": "2.6.12-1+deb12u4",
		"stunnel 5.68 on x86_64-pc-linux-gnu platform":                       "5.68",
		"OpenSSL 3.0.19 27 Jan 2026 (Library: OpenSSL 3.0.19 27 Jan 2026)":   "3.0.19",
		"v2.11.9": "v2.11.9", "1.68.2": "1.68.2", "unknown": "unknown",
	} {
		if got := ShortVersion(in); got != want {
			t.Errorf("ShortVersion(%q) = %q, want %q", in, got, want)
		}
	}
}
