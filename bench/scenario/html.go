package scenario

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"regexp"
	"strings"
)

// RenderHTML renders the results as one self-contained HTML page: inline
// CSS and SVG, no scripts, nothing fetched from the network.
func RenderHTML(res *Results) ([]byte, error) {
	rep := buildReport(res)
	var b bytes.Buffer
	b.WriteString(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>` + html.EscapeString(rep.Title) + `</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1180px;padding:0 1em;color:#1b1f24}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px}th{background:#f6f8fa}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.charts{display:flex;flex-wrap:wrap;gap:1em}
.chart{border:1px solid #d0d7de;border-radius:6px;padding:.4em}
.missed{color:#b42318;font-weight:bold}.met{color:#1a7f37}
nav a{margin-right:1em}
</style></head><body>
`)
	fmt.Fprintf(&b, "<h1>%s</h1>\n", html.EscapeString(rep.Title))
	for _, p := range rep.Header {
		fmt.Fprintf(&b, "<p>%s</p>\n", inline(p))
	}
	b.WriteString("<nav><a href=\"#goals\">Goals</a>")
	for _, s := range rep.Sections {
		fmt.Fprintf(&b, "<a href=\"#%s\">%s</a>", html.EscapeString(s.ID), html.EscapeString(s.Title))
	}
	if len(rep.Notes) > 0 {
		b.WriteString("<a href=\"#notes\">Notes</a>")
	}
	b.WriteString("</nav>\n<h2 id=\"goals\">Goals</h2>\n")
	writeHTMLTable(&b, rep.Goals)
	for _, s := range rep.Sections {
		fmt.Fprintf(&b, "<h2 id=\"%s\">%s</h2>\n", html.EscapeString(s.ID), html.EscapeString(s.Title))
		for _, p := range s.Paras {
			fmt.Fprintf(&b, "<p>%s</p>\n", inline(p))
		}
		for _, t := range s.Tables {
			writeHTMLTable(&b, t)
		}
		if len(s.Charts) > 0 {
			b.WriteString("<div class=\"charts\">\n")
			for _, c := range s.Charts {
				b.WriteString("<div class=\"chart\">")
				b.WriteString(renderSVG(c))
				b.WriteString("</div>\n")
			}
			b.WriteString("</div>\n")
		}
		if len(s.Commands) > 0 {
			b.WriteString("<details><summary>Exact commands (round 1, one per row)</summary><pre>")
			for _, c := range s.Commands {
				b.WriteString(html.EscapeString(c) + "\n")
			}
			b.WriteString("</pre></details>\n")
		}
	}
	if len(rep.Notes) > 0 {
		b.WriteString("<h2 id=\"notes\">Notes</h2>\n<ul>\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(&b, "<li>%s</li>\n", inline(n))
		}
		b.WriteString("</ul>\n")
	}
	b.WriteString("</body></html>\n")
	return b.Bytes(), nil
}

var (
	codeRE = regexp.MustCompile("`([^`]+)`")
	boldRE = regexp.MustCompile(`\*\*([^*]+)\*\*`)
)

// inline renders the Markdown subset used in report text (`code`,
// **bold**) as escaped HTML.
func inline(s string) string {
	s = html.EscapeString(s)
	s = codeRE.ReplaceAllString(s, "<code>$1</code>")
	return boldRE.ReplaceAllString(s, "<b>$1</b>")
}

func writeHTMLTable(b *bytes.Buffer, t table) {
	b.WriteString("<table><thead><tr>")
	for i, h := range t.Head {
		cls := ""
		if t.right(i) {
			cls = ` class="r"`
		}
		fmt.Fprintf(b, "<th%s>%s</th>", cls, html.EscapeString(h))
	}
	b.WriteString("</tr></thead><tbody>\n")
	for _, r := range t.Rows {
		b.WriteString("<tr>")
		for i, v := range t.cells(r) {
			cls := ""
			if t.right(i) {
				cls = "r"
			}
			switch v {
			case "**MISSED**":
				cls += " missed"
			case GoalMet:
				cls += " met"
			}
			if cls != "" {
				cls = ` class="` + strings.TrimSpace(cls) + `"`
			}
			fmt.Fprintf(b, "<td%s>%s</td>", cls, inline(v))
		}
		b.WriteString("</tr>\n")
	}
	b.WriteString("</tbody></table>\n")
	for _, n := range t.Notes {
		fmt.Fprintf(b, "<p>%s</p>\n", inline(n))
	}
}

// palette gives each target (and tool) a stable colour.
var palette = map[string]string{
	Direct: "#6e7781", Quicmesh: "#0969da", QuicmeshTCP: "#54aeff", CaddyH3: "#1a7f37", HAProxyH2: "#bf8700", Stunnel: "#cf222e",
	"fortio": "#8250df", "quicmesh bench": "#0969da",
}

var spare = []string{"#116329", "#953800", "#0550ae", "#a40e26"}

func colorOf(name string, i int) string {
	if c, ok := palette[name]; ok {
		return c
	}
	return spare[i%len(spare)]
}

const (
	svgW, svgH                     = 540, 300
	padL, padR, padT, padB         = 62, 14, 28, 58
	plotW                  float64 = svgW - padL - padR
	plotH                  float64 = svgH - padT - padB
)

func renderSVG(c chart) string {
	if c.Kind == "bar" {
		return renderBars(c)
	}
	return renderPercentiles(c)
}

// renderPercentiles draws one line per series over the percentile labels,
// equally spaced (a "nines" axis), on a log-scale latency axis.
func renderPercentiles(c chart) string {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for _, v := range s.Values {
			if v > 0 && !math.IsInf(v, 0) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img">`, svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<title>%s</title>`, html.EscapeString(c.Title))
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="12" font-weight="bold">%s</text>`, padL, html.EscapeString(c.Title))
	if math.IsInf(lo, 0) {
		b.WriteString(`<text x="100" y="120" font-size="12">no data</text></svg>`)
		return b.String()
	}
	y0, y1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if y1 == y0 {
		y1 = y0 + 1
	}
	ypos := func(v float64) float64 { return padT + plotH - (math.Log10(v)-y0)/(y1-y0)*plotH }
	n := len(c.XLabels)
	xpos := func(i int) float64 {
		if n <= 1 {
			return padL + plotW/2
		}
		return padL + float64(i)/float64(n-1)*plotW
	}
	// Grid: 1, 2, 5 × 10^k over up to three decades, powers of ten only
	// beyond.
	mults := []float64{1, 2, 5}
	if y1-y0 > 3 {
		mults = []float64{1}
	}
	for e := y0; e <= y1; e++ {
		for _, m := range mults {
			v := m * math.Pow(10, e)
			if math.Log10(v) > y1+1e-9 {
				continue
			}
			y := ypos(v)
			stroke := "#eaeef2"
			if m == 1 {
				stroke = "#d0d7de"
			}
			fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s"/>`, padL, padL+plotW, y, y, stroke)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="10" text-anchor="end">%s</text>`, padL-4, y+3, fmtLatency(v))
		}
	}
	for i, l := range c.XLabels {
		x := xpos(i)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#eaeef2"/>`, x, x, padT, padT+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%s</text>`, x, padT+plotH+14, html.EscapeString(l))
	}
	fmt.Fprintf(&b, `<text x="12" y="%.1f" font-size="10" transform="rotate(-90 12 %.1f)" text-anchor="middle">latency (log)</text>`, padT+plotH/2, padT+plotH/2)
	for si, s := range c.Series {
		col := colorOf(s.Name, si)
		var pts []string
		for i, v := range s.Values {
			if v > 0 && i < n {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xpos(i), ypos(v)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, col, strings.Join(pts, " "))
		for i, v := range s.Values {
			if v > 0 && i < n {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %s: %s µs</title></circle>`,
					xpos(i), ypos(v), col, html.EscapeString(s.Name), html.EscapeString(c.XLabels[i]), fmtInt(v))
			}
		}
		lx := padL + (si%4)*118
		ly := svgH - 24 + (si/4)*14
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s</text>`,
			lx, ly-9, col, lx+14, ly, html.EscapeString(s.Name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// renderBars draws one horizontal bar per series (its first value).
func renderBars(c chart) string {
	hi := 0.0
	for _, s := range c.Series {
		if len(s.Values) > 0 && s.Values[0] > hi {
			hi = s.Values[0]
		}
	}
	rowH := 24
	h := padT + 10 + rowH*len(c.Series)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img">`, svgW, h, svgW, h)
	fmt.Fprintf(&b, `<title>%s</title>`, html.EscapeString(c.Title))
	fmt.Fprintf(&b, `<text x="8" y="16" font-size="12" font-weight="bold">%s</text>`, html.EscapeString(c.Title))
	const labelW, valueW = 90, 80
	barMax := float64(svgW - labelW - valueW - 16)
	for i, s := range c.Series {
		v := 0.0
		if len(s.Values) > 0 {
			v = s.Values[0]
		}
		y := padT + i*rowH
		w := 0.0
		if hi > 0 && v > 0 {
			w = v / hi * barMax
		}
		val := fmtInt(v)
		if c.Unit == "Gbit/s" {
			val = fmt.Sprintf("%.2f", v)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" text-anchor="end">%s</text>`, labelW, y+14, html.EscapeString(s.Name))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, labelW+6, y+3, w, rowH-8, colorOf(s.Name, i))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="11">%s %s</text>`, float64(labelW+10)+w, y+14, val, html.EscapeString(c.Unit))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func fmtLatency(us float64) string {
	switch {
	case us >= 1e6:
		return trimZero(us/1e6) + " s"
	case us >= 1e3:
		return trimZero(us/1e3) + " ms"
	default:
		return trimZero(us) + " µs"
	}
}

func trimZero(x float64) string {
	s := fmt.Sprintf("%.1f", x)
	return strings.TrimSuffix(s, ".0")
}
