package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

// loadGen runs the load generators against started targets: the bundled
// one ("quicmesh-dev bench") for every measured run and readiness round, fortio for
// the cross-check. Each run's raw result goes to runsDir.
type loadGen struct {
	devBin, fortio string
	runsDir        string
	rec            *recorder // logs each run
}

// inNS wraps argv to run in network namespace ns ("" = the host's).
func inNS(ns string, argv []string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// exited returns an error with the end of its log for the first of ps
// that is no longer running.
func exited(ps []*proc, tail int) error {
	for _, p := range ps {
		if !p.alive() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail(tail))
		}
	}
	return nil
}

// runName names the raw result file of one run.
func runName(l Load, cond, target string, round int) string {
	if cond != "" {
		return fmt.Sprintf("%s-%s-%s-r%d", l.ID, slug(cond), target, round)
	}
	return fmt.Sprintf("%s-%s-r%d", l.ID, target, round)
}

// bench applies l to lt with the bundled load generator, which samples
// the target's proxy processes.
func (g loadGen) bench(ctx context.Context, l Load, cond string, lt *liveTarget, round int) Run {
	jsonPath := filepath.Join(g.runsDir, runName(l, cond, lt.name, round)+".json")
	argv := inNS(lt.ns, append([]string{g.devBin, "bench"}, l.BenchArgs(lt.front, jsonPath, lt.sample)...))
	run := Run{Load: l.ID, Cond: cond, Target: lt.name, Round: round, Command: shellQuote(argv)}
	for _, p := range lt.sample {
		run.Procs = append(run.Procs, p.Name)
	}
	if err := exited(lt.procs, 400); err != nil {
		run.Error = err.Error()
		g.rec.logf("%s %s r%d %s: %s", l.ID, cond, round, lt.name, run.Error)
		return run
	}
	if err := g.ready(ctx, l, lt, cond != ""); err != nil {
		run.Error = err.Error()
		g.rec.logf("%s %s r%d %s: %s", l.ID, cond, round, lt.name, run.Error)
		return run
	}
	_ = os.Remove(jsonPath)
	limit := l.Warmup + l.Duration + max(l.Timeout, bench.DefaultTimeout) + 30*time.Second
	var stderr bytes.Buffer
	err := g.exec(ctx, limit, argv, &run, nil, &stderr)
	if err != nil {
		run.Error = fmt.Sprintf("quicmesh bench: %v: %s", err, strings.TrimSpace(stderr.String()))
	} else if data, rerr := os.ReadFile(jsonPath); rerr != nil {
		run.Error = rerr.Error()
	} else {
		var res bench.Result
		if jerr := json.Unmarshal(data, &res); jerr != nil {
			run.Error = "bad result: " + jerr.Error()
		} else {
			run.Result = &res
		}
	}
	g.rec.logRun(l, cond, lt.name, round, run)
	return run
}

// FortioArgs are the fortio arguments equivalent to l against url: same
// rate with uniform pacing (or, for a closed loop, -qps 0: as fast as it
// can, no pacing), same number of connections (fortio: one per thread),
// 10 µs histogram resolution (fortio's default 1 ms bucket would swamp
// sub-millisecond latencies).
func FortioArgs(l Load, url, jsonPath string) []string {
	a := []string{"load", "-qps", fmtNum(l.Rate), "-c", strconv.Itoa(l.Concurrency)}
	if l.Rate > 0 {
		a = append(a, "-uniform")
	}
	return append(a, "-t", l.Duration.String(), "-r", "0.00001", "-loglevel", "Warning", "-json", jsonPath, url)
}

// fortioRun applies l to lt with fortio.
func (g loadGen) fortioRun(ctx context.Context, l Load, lt *liveTarget, round int) Run {
	jsonPath := filepath.Join(g.runsDir, fmt.Sprintf("%s-fortio-r%d.json", l.ID, round))
	argv := append([]string{g.fortio}, FortioArgs(l, l.TargetURL(lt.front), jsonPath)...)
	run := Run{Load: l.ID, Target: lt.name, Round: round, Tool: ToolFortio, Command: shellQuote(argv)}
	if err := g.ready(ctx, l, lt, false); err != nil {
		run.Error = err.Error()
		g.rec.logf("%s r%d fortio: %s", l.ID, round, run.Error)
		return run
	}
	var out bytes.Buffer
	err := g.exec(ctx, l.Duration+30*time.Second, argv, &run, &out, &out)
	if err != nil {
		run.Error = fmt.Sprintf("fortio: %v: %s", err, lastLines(out.String(), 5))
	} else if data, err := os.ReadFile(jsonPath); err != nil {
		run.Error = err.Error()
	} else if f, err := ParseFortio(data); err != nil {
		run.Error = err.Error()
	} else {
		run.Fortio = f
	}
	g.rec.logRun(l, "", "fortio", round, run)
	return run
}

// exec runs a load generator for at most limit and records in run how
// busy the rest of the machine was meanwhile.
func (g loadGen) exec(ctx context.Context, limit time.Duration, argv []string, run *Run, stdout, stderr io.Writer) error {
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(rctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	busy := startOtherCPU()
	err := cmd.Run()
	run.OtherCores = busy.cores()
	if ps := cmd.ProcessState; ps != nil {
		run.ToolCPUSeconds = (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	return err
}

// slug turns a condition name into a file-name part.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case c == '.':
			b.WriteRune('p')
		case c == '%':
			b.WriteString("pct")
		default:
			if !dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = true
			continue
		}
		dash = false
	}
	return strings.TrimSuffix(b.String(), "-")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
