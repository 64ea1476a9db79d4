package scenario

import (
	"fmt"
	"strings"
)

// RenderMarkdown renders the results as the generated section of
// docs/benchmarks.md (headings start at level 3).
func RenderMarkdown(res *Results) string {
	rep := buildReport(res)
	var b strings.Builder
	for _, p := range rep.Header {
		b.WriteString(p + "\n\n")
	}
	b.WriteString("The same figures with latency-percentile plots: `bench/out/report.html` (written by every run, not committed).\n\n")
	b.WriteString("### Goals\n\n")
	writeMDTable(&b, rep.Goals)
	for _, s := range rep.Sections {
		fmt.Fprintf(&b, "\n### %s\n\n", s.Title)
		for _, p := range s.Paras {
			b.WriteString(p + "\n\n")
		}
		for _, t := range s.Tables {
			writeMDTable(&b, t)
		}
		if len(s.Commands) > 0 {
			b.WriteString("\n<details><summary>Exact commands (round 1, one per row)</summary>\n\n```sh\n")
			for _, c := range s.Commands {
				b.WriteString(c + "\n")
			}
			b.WriteString("```\n\n</details>\n")
		}
	}
	if len(rep.Notes) > 0 {
		b.WriteString("\n### Notes\n\n")
		for _, n := range rep.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	return b.String()
}

func writeMDTable(b *strings.Builder, t table) {
	cell := func(s string) string {
		s = strings.ReplaceAll(s, "|", `\|`)
		return strings.ReplaceAll(s, "\n", " ")
	}
	b.WriteString("|")
	for _, h := range t.Head {
		b.WriteString(" " + cell(h) + " |")
	}
	b.WriteString("\n|")
	for i := range t.Head {
		if t.right(i) {
			b.WriteString("---:|")
		} else {
			b.WriteString("---|")
		}
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		b.WriteString("|")
		for _, v := range t.cells(r) {
			b.WriteString(" " + cell(v) + " |")
		}
		b.WriteString("\n")
	}
	for _, n := range t.Notes {
		b.WriteString("\n" + n + "\n")
	}
}
