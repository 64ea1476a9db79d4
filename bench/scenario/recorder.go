package scenario

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// recorder assembles the Results of one invocation (runs, link counters,
// notes) and writes the progress log.
type recorder struct {
	res     *Results
	log     io.Writer
	started time.Time
}

func newRecorder(opt Options, started time.Time) *recorder {
	log := opt.Log
	if log == nil {
		log = io.Discard
	}
	return &recorder{log: log, started: started, res: &Results{
		Schema:  ResultsSchema,
		Command: opt.Command,
		Quick:   len(opt.Plan.Loads) > 0 && opt.Plan.CrossRounds == 0 && opt.Plan.Rounds == 1,
		Started: started.UTC(),
		Loads:   opt.Plan.Loads,
		Conds:   opt.Plan.Conds,
		Notes:   append([]string(nil), opt.Notes...),
	}}
}

// logf writes a progress line, stamped with the time since the start.
func (rc *recorder) logf(format string, a ...any) {
	fmt.Fprintf(rc.log, "[%s] %s\n", time.Since(rc.started).Round(time.Second), fmt.Sprintf(format, a...))
}

// note adds a fact the reader of the report must know (on one line) and
// logs it.
func (rc *recorder) note(format string, a ...any) {
	n := strings.Join(strings.Fields(fmt.Sprintf(format, a...)), " ")
	rc.res.Notes = append(rc.res.Notes, n)
	rc.logf("note: %s", n)
}

func (rc *recorder) addRun(run Run)          { rc.res.Runs = append(rc.res.Runs, run) }
func (rc *recorder) addLinkStat(st LinkStat) { rc.res.LinkStats = append(rc.res.LinkStats, st) }

// setConds records the conditions actually measured (the delay ones are
// dropped when delay cannot be emulated).
func (rc *recorder) setConds(cs []Cond) { rc.res.Conds = cs }

// logRun logs the outcome of one run.
func (rc *recorder) logRun(l Load, cond, target string, round int, run Run) {
	where := l.ID
	if cond != "" {
		where += " [" + cond + "]"
	}
	if run.Error != "" {
		rc.logf("%s r%d %-12s error: %s", where, round, target, run.Error)
		return
	}
	if res := run.Result; res != nil {
		cpu := 0.0
		for _, p := range res.Processes {
			cpu += p.CPUMicrosPerRequest
		}
		rc.logf("%s r%d %-12s %9.0f rps  p50 %6d µs  p99 %7d µs  errors %d  unsent %d  proxy CPU %.0f µs/req  %.1f MiB/s  other CPU %.2f cores",
			where, round, target, res.RPS, res.LatencyUS.P50, res.LatencyUS.P99, res.ErrorTotal, res.Unsent, cpu, res.BytesPerSecond/(1<<20), run.OtherCores)
	}
	if f := run.Fortio; f != nil {
		rc.logf("%s r%d %-12s fortio %7.0f qps  p50 %6.0f µs  p99 %7.0f µs  errors %d", where, round, target, f.ActualQPS, f.Percentile(50), f.Percentile(99), f.Errors)
	}
}
