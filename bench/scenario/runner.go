package scenario

import (
	"context"
	"io"
	"path/filepath"
	"time"
)

// Options configures Execute.
type Options struct {
	// Bin is the quicmesh binary (sidecars, CA).
	Bin string
	// DevBin is the quicmesh-dev binary (echo apps, load generator);
	// empty means quicmesh-dev next to Bin, where "make build" puts it.
	DevBin string
	// OutDir receives the raw results (runs/), logs and configs (work/).
	OutDir string
	// Peer binaries; an empty path means the peer is not available and
	// its targets are skipped (with a note).
	Caddy, HAProxy, Stunnel, Fortio, OpenSSL string
	// Lossy enables the lossy-link loads: two network namespaces made with
	// bench/netlab (needs root, iproute2, iptables; TUN for delay).
	Lossy bool
	// Budget bounds the whole run: a phase that would not fit is skipped
	// with a note (0 = no bound).
	Budget time.Duration
	Plan   Plan
	// Command is the command line to quote in the report.
	Command string
	// Notes are added to the results' notes.
	Notes []string
	// Log receives progress lines.
	Log io.Writer
}

// Runner executes a Plan. Use Execute.
//
// Its parts, one job each: supervisor (the processes it starts), portAlloc
// (their addresses), launcher and pairKinds (the targets' sidecar pairs),
// startApps (the echo apps), loadGen (load runs and readiness rounds), otherCPU (how
// busy the machine was), recorder (the Results and the progress log). The
// runner itself only walks the plan: phases.go.
type Runner struct {
	opt   Options
	rec   *recorder
	sup   *supervisor
	ports *portAlloc
	pairs *launcher
	gen   loadGen
	apps  map[string]string // loopback echo apps by kind
}

// Execute runs opt.Plan and returns what was measured. Processes it started
// are stopped before it returns, also when ctx ends (then the partial
// results are returned with ctx's error).
func Execute(ctx context.Context, opt Options) (*Results, error) {
	if opt.DevBin == "" {
		opt.DevBin = filepath.Join(filepath.Dir(opt.Bin), "quicmesh-dev")
	}
	r := &Runner{
		opt:   opt,
		rec:   newRecorder(opt, time.Now()),
		sup:   &supervisor{logDir: filepath.Join(opt.OutDir, "work", "logs")},
		ports: newPortAlloc(),
	}
	defer r.sup.stopAll()
	r.rec.res.Machine = describeMachine(ctx, opt)
	err := r.execute(ctx)
	r.rec.res.Finished = time.Now().UTC()
	return r.rec.res, err
}

func (r *Runner) execute(ctx context.Context) error {
	if err := r.setUp(ctx); err != nil {
		return err
	}
	var lossy, cross []Load
	for _, l := range r.opt.Plan.Loads {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch l.Group {
		case GroupLoopback:
			if r.fits(l, r.opt.Plan.Rounds*len(l.Targets)) {
				r.loopbackPhase(ctx, l)
			}
		case GroupLossy:
			lossy = append(lossy, l)
		case GroupCrossCheck:
			cross = append(cross, l)
		}
	}
	for _, l := range cross {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.opt.Fortio == "" {
			r.rec.note("Cross-check skipped: fortio is not installed.")
			continue
		}
		if r.fits(l, 2*r.opt.Plan.CrossRoundsOf(l)) {
			r.crossCheck(ctx, l)
		}
	}
	if len(lossy) > 0 && ctx.Err() == nil {
		if !r.opt.Lossy {
			r.rec.note("Lossy-link scenarios skipped: not enabled (--lossy=false).")
		} else {
			r.lossyPhases(ctx, lossy)
		}
	}
	return ctx.Err()
}

// setUp prepares the output directory, the certificates and the loopback
// echo apps, and checks the Caddy pair.
func (r *Runner) setUp(ctx context.Context) error {
	work, err := prepareOut(r.opt.OutDir)
	if err != nil {
		return err
	}
	mesh, err := makeQuicmeshCerts(ctx, r.opt.Bin, work.path("qm"))
	if err != nil {
		return err
	}
	var peer PeerCerts
	if r.opt.OpenSSL == "" {
		if r.opt.Caddy != "" || r.opt.HAProxy != "" || r.opt.Stunnel != "" {
			r.rec.note("openssl not found: peer pairs skipped.")
		}
		r.opt.Caddy, r.opt.HAProxy, r.opt.Stunnel = "", "", ""
	} else if peer, err = makePeerCerts(ctx, r.opt.OpenSSL, work.path("peer")); err != nil {
		return err
	}
	r.pairs = &launcher{opt: &r.opt, sup: r.sup, ports: r.ports, work: work, certs: peer, mesh: mesh}
	r.gen = loadGen{devBin: r.opt.DevBin, fortio: r.opt.Fortio, runsDir: filepath.Join(r.opt.OutDir, "runs"), rec: r.rec}
	if r.apps, _, err = startApps(ctx, r.sup, r.opt.DevBin, "app-", "", loopbackApps, freeAddr); err != nil {
		return err
	}
	if r.opt.Caddy != "" {
		note, ok := checkCaddy(ctx, r.pairs, r.gen, r.apps["http1"])
		r.rec.note("%s", note)
		if !ok {
			r.opt.Caddy = ""
		}
	}
	return nil
}

// fits reports whether runs runs of l still fit in the budget, noting it
// if not.
func (r *Runner) fits(l Load, runs int) bool { return r.fitsAs(l.Title, l, runs) }

// fitsAs is fits with the name to use in the note.
func (r *Runner) fitsAs(title string, l Load, runs int) bool {
	if r.opt.Budget <= 0 {
		return true
	}
	need := time.Duration(runs)*(l.Duration+l.Warmup+700*time.Millisecond) + 5*time.Second
	left := r.opt.Budget - time.Since(r.rec.started)
	if need > left {
		r.rec.note("%s skipped: it needs about %s and only %s of the %s budget is left.", title, need.Round(time.Second), left.Round(time.Second), r.opt.Budget)
		return false
	}
	return true
}
