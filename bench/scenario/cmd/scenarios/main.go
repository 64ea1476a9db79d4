// Command scenarios runs quicmesh's side-by-side benchmark scenarios and
// writes their report: bench/out/results.json (every raw result),
// bench/out/report.html (self-contained) and, with --doc, the generated
// section of docs/benchmarks.md. bench/run.sh installs the peers, creates
// the network namespaces and runs it; see that script for the usual flags.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/quicmesh/quicmesh/bench/scenario"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, "; ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() { os.Exit(run()) }

func run() int {
	var (
		opt        scenario.Options
		doc        string
		quick      bool
		reportOnly string
		rounds     int
		only       string
		targets    string
		conds      string
		notes      listFlag
	)
	fs := flag.NewFlagSet("scenarios", flag.ContinueOnError)
	fs.StringVar(&opt.Bin, "bin", "bin/quicmesh", "quicmesh binary (sidecars, CA)")
	fs.StringVar(&opt.DevBin, "dev-bin", "bin/quicmesh-dev", "quicmesh-dev binary (echo apps, load generator)")
	fs.StringVar(&opt.OutDir, "out", "bench/out", "output directory")
	fs.StringVar(&doc, "doc", "", "Markdown file whose generated section to rewrite (e.g. docs/benchmarks.md)")
	fs.BoolVar(&quick, "quick", false, "smoke run: direct and quicmesh only, 1 s per load, one round")
	fs.StringVar(&reportOnly, "report", "", "render the reports from this results.json instead of measuring")
	fs.IntVar(&rounds, "rounds", 0, "rounds per load and condition (0 = plan default)")
	fs.StringVar(&only, "loads", "", "comma-separated load IDs to run (default: all of the plan)")
	fs.StringVar(&targets, "targets", "", "comma-separated targets to run every load on instead of each load's own, e.g. direct,quicmesh,quicmesh-tcp,haproxy-h2 (direct is left out of the lossy loads; the cross-checks keep theirs)")
	fs.StringVar(&conds, "conds", "", `comma-separated lossy-link conditions, e.g. "0% loss,2% loss" (default: all of the plan)`)
	fs.StringVar(&opt.Caddy, "caddy", lookGo("caddy"), "Caddy 2.11 binary (empty: skip Caddy)")
	fs.StringVar(&opt.HAProxy, "haproxy", look("haproxy"), "haproxy binary (empty: skip)")
	fs.StringVar(&opt.Stunnel, "stunnel", look("stunnel4", "stunnel"), "stunnel binary (empty: skip)")
	fs.StringVar(&opt.Fortio, "fortio", lookGo("fortio"), "fortio binary (empty: skip the cross-check)")
	fs.StringVar(&opt.OpenSSL, "openssl", look("openssl"), "openssl binary (peer certificates)")
	fs.BoolVar(&opt.Lossy, "lossy", true, "run the lossy-link loads in network namespaces (needs root, iproute2, iptables)")
	fs.DurationVar(&opt.Budget, "budget", 16*time.Minute, "skip phases that would not finish within this (0 = no bound)")
	fs.StringVar(&opt.Command, "command", "make bench", "command line to quote in the report")
	fs.Var(&notes, "note", "a note for the report (repeatable)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}

	var res *scenario.Results
	if reportOnly != "" {
		data, err := os.ReadFile(reportOnly)
		if err != nil {
			return fail("%v", err)
		}
		res = &scenario.Results{}
		if err := json.Unmarshal(data, res); err != nil {
			return fail("%s: %v", reportOnly, err)
		}
	} else {
		opt.Plan = scenario.DefaultPlan()
		if quick {
			opt.Plan = scenario.QuickPlan()
			opt.Caddy, opt.HAProxy, opt.Stunnel, opt.Fortio = "", "", "", ""
			opt.Lossy = false
		}
		if rounds > 0 {
			opt.Plan.Rounds = rounds
			opt.Plan.LossyRounds = rounds
			opt.Plan.CrossRounds = rounds
		}
		for _, sel := range []struct {
			flag, value string
			apply       func(scenario.Plan, []string) (scenario.Plan, error)
		}{
			{"--loads", only, scenario.Plan.Only},
			{"--targets", targets, scenario.Plan.WithTargets},
			{"--conds", conds, scenario.Plan.OnlyConds},
		} {
			if sel.value == "" {
				continue
			}
			var err error
			if opt.Plan, err = sel.apply(opt.Plan, strings.Split(sel.value, ",")); err != nil {
				return fail("%s: %v", sel.flag, err)
			}
		}
		opt.Notes = notes
		opt.Log = os.Stderr
		if err := os.MkdirAll(opt.OutDir, 0o755); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(os.Stderr, "scenarios: plan estimate %s (budget %s)\n", opt.Plan.Estimate().Round(time.Second), opt.Budget)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		var err error
		res, err = scenario.Execute(ctx, opt)
		if res != nil {
			if werr := writeJSON(filepath.Join(opt.OutDir, "results.json"), res); werr != nil {
				return fail("%v", werr)
			}
		}
		if err != nil {
			return fail("%v (partial results in %s)", err, filepath.Join(opt.OutDir, "results.json"))
		}
	}

	html, err := scenario.RenderHTML(res)
	if err != nil {
		return fail("%v", err)
	}
	htmlPath := filepath.Join(opt.OutDir, "report.html")
	if err := os.WriteFile(htmlPath, html, 0o644); err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(os.Stderr, "scenarios: wrote %s\n", htmlPath)
	md := scenario.RenderMarkdown(res)
	if doc != "" {
		if err := scenario.RewriteSection(doc, md); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(os.Stderr, "scenarios: rewrote the generated section of %s\n", doc)
	} else {
		mdPath := filepath.Join(opt.OutDir, "report.md")
		if err := os.WriteFile(mdPath, []byte(md), 0o644); err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(os.Stderr, "scenarios: wrote %s\n", mdPath)
	}
	return 0
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "scenarios: "+format+"\n", a...)
	return 1
}

// look returns the first of names found on PATH, or "".
func look(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// lookGo finds a go-installed tool: $GOBIN, $GOPATH/bin, then PATH.
func lookGo(name string) string {
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("GOPATH"); d != "" {
		dirs = append(dirs, filepath.Join(strings.Split(d, ":")[0], "bin"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(h, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return look(name)
}
