package scenario

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench"
	"github.com/quicmesh/quicmesh/bench/netlab"
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
type Runner struct {
	opt      Options
	res      *Results
	work     string
	live     []*proc
	certs    PeerCerts
	qmA, qmB string // quicmesh certificate stems (DIR/NAME)
	qmIDB    string
	apps     map[string]string // loopback echo apps by kind
	started  time.Time
	nsPort   int
}

// Execute runs opt.Plan and returns what was measured. Processes it started
// are stopped before it returns, also when ctx ends (then the partial
// results are returned with ctx's error).
func Execute(ctx context.Context, opt Options) (*Results, error) {
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	if opt.DevBin == "" {
		opt.DevBin = filepath.Join(filepath.Dir(opt.Bin), "quicmesh-dev")
	}
	r := &Runner{opt: opt, started: time.Now(), nsPort: 20000}
	r.res = &Results{
		Schema:  ResultsSchema,
		Command: opt.Command,
		Quick:   len(opt.Plan.Loads) > 0 && opt.Plan.CrossRounds == 0 && opt.Plan.Rounds == 1,
		Started: r.started.UTC(),
		Loads:   opt.Plan.Loads,
		Conds:   opt.Plan.Conds,
		Notes:   append([]string(nil), opt.Notes...),
	}
	defer r.stopAll()
	r.res.Machine = r.machine(ctx)
	err := r.execute(ctx)
	r.res.Finished = time.Now().UTC()
	return r.res, err
}

func (r *Runner) logf(format string, a ...any) {
	fmt.Fprintf(r.opt.Log, "[%s] %s\n", time.Since(r.started).Round(time.Second), fmt.Sprintf(format, a...))
}

func (r *Runner) note(format string, a ...any) {
	n := strings.Join(strings.Fields(fmt.Sprintf(format, a...)), " ")
	r.res.Notes = append(r.res.Notes, n)
	r.logf("note: %s", n)
}

func (r *Runner) execute(ctx context.Context) error {
	r.work = filepath.Join(r.opt.OutDir, "work")
	// Both are the runner's own scratch space: start from nothing (a
	// previous run's CA would make "quicmesh ca init" refuse).
	for _, d := range []string{r.work, filepath.Join(r.opt.OutDir, "runs")} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	for _, d := range []string{"runs", "work/logs", "work/conf", "work/qm", "work/peer", "work/caddy-home"} {
		if err := os.MkdirAll(filepath.Join(r.opt.OutDir, d), 0o755); err != nil {
			return err
		}
	}
	if err := r.setupCerts(ctx); err != nil {
		return err
	}
	if err := r.startApps(ctx); err != nil {
		return err
	}
	r.checkPeers(ctx)

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
			r.note("Cross-check skipped: fortio is not installed.")
			continue
		}
		if r.fits(l, 2*r.opt.Plan.CrossRounds) {
			r.crossCheck(ctx, l)
		}
	}
	if len(lossy) > 0 && ctx.Err() == nil {
		if !r.opt.Lossy {
			r.note("Lossy-link scenarios skipped: not enabled (--lossy=false).")
		} else {
			r.lossyPhases(ctx, lossy)
		}
	}
	return ctx.Err()
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
	left := r.opt.Budget - time.Since(r.started)
	if need > left {
		r.note("%s skipped: it needs about %s and only %s of the %s budget is left.", title, need.Round(time.Second), left.Round(time.Second), r.opt.Budget)
		return false
	}
	return true
}

// ---- set-up ----

func (r *Runner) path(parts ...string) string {
	return filepath.Join(append([]string{r.work}, parts...)...)
}

func (r *Runner) runCmd(ctx context.Context, dir string, argv ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", shellQuote(argv), err, bytes.TrimSpace(out))
	}
	return nil
}

func (r *Runner) setupCerts(ctx context.Context) error {
	qm := r.path("qm")
	const td = "bench.local"
	steps := [][]string{
		{r.opt.Bin, "ca", "init", "--dir", filepath.Join(qm, "ca"), "--trust-domain", td},
		{r.opt.Bin, "ca", "issue", "--ca-dir", filepath.Join(qm, "ca"), "--id", "spiffe://" + td + "/ns/bench/sa/client", "--name", "client", "--out", filepath.Join(qm, "a")},
		{r.opt.Bin, "ca", "issue", "--ca-dir", filepath.Join(qm, "ca"), "--id", "spiffe://" + td + "/ns/bench/sa/echo", "--name", "echo", "--out", filepath.Join(qm, "b")},
	}
	for _, s := range steps {
		if err := r.runCmd(ctx, "", s...); err != nil {
			return err
		}
	}
	r.qmA, r.qmB = filepath.Join(qm, "a", "client"), filepath.Join(qm, "b", "echo")
	r.qmIDB = "spiffe://" + td + "/ns/bench/sa/echo"

	if r.opt.OpenSSL == "" {
		if r.opt.Caddy != "" || r.opt.HAProxy != "" || r.opt.Stunnel != "" {
			r.note("openssl not found: peer pairs skipped.")
		}
		r.opt.Caddy, r.opt.HAProxy, r.opt.Stunnel = "", "", ""
		return nil
	}
	dir := r.path("peer")
	o := r.opt.OpenSSL
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	steps = [][]string{
		append(append([]string{o, "req", "-x509"}, ec...), "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
			"-subj", "/CN=quicmesh bench peer CA", "-addext", "basicConstraints=critical,CA:TRUE",
			"-addext", "keyUsage=critical,keyCertSign,cRLSign"),
	}
	for _, n := range []struct{ name, dns string }{{"server", PeerHost}, {"client", "client.test"}} {
		ext := fmt.Sprintf("subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n", n.dns)
		if err := os.WriteFile(filepath.Join(dir, n.name+".ext"), []byte(ext), 0o644); err != nil {
			return err
		}
		steps = append(steps,
			append(append([]string{o, "req"}, ec...), "-keyout", n.name+".key", "-out", n.name+".csr", "-subj", "/CN="+n.dns),
			[]string{o, "x509", "-req", "-in", n.name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
				"-days", "2", "-out", n.name + ".crt", "-extfile", n.name + ".ext"})
	}
	for _, s := range steps {
		if err := r.runCmd(ctx, dir, s...); err != nil {
			return err
		}
	}
	for _, n := range []string{"server", "client"} {
		crt, err1 := os.ReadFile(filepath.Join(dir, n+".crt"))
		key, err2 := os.ReadFile(filepath.Join(dir, n+".key"))
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, n+".pem"), append(crt, key...), 0o600); err != nil {
			return err
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	f := func(n string) string { return filepath.Join(abs, n) }
	r.certs = PeerCerts{CA: f("ca.crt"), ServerCert: f("server.crt"), ServerKey: f("server.key"), ServerPEM: f("server.pem"),
		ClientCert: f("client.crt"), ClientKey: f("client.key"), ClientPEM: f("client.pem")}
	return nil
}

// startApps starts the loopback echo apps.
func (r *Runner) startApps(ctx context.Context) error {
	r.apps = map[string]string{}
	for _, kind := range []string{"http1", "grpc", "tcp"} {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		p, err := r.start("app-"+kind, "", nil, r.opt.DevBin, "echo", "--proto", kind, "--listen", addr)
		if err != nil {
			return err
		}
		if err := waitTCP(ctx, addr, p, 10*time.Second); err != nil {
			return err
		}
		r.apps[kind] = addr
	}
	return nil
}

func (r *Runner) start(name, ns string, env []string, argv ...string) (*proc, error) {
	p, err := startProc(name, ns, r.path("logs", name+".log"), env, argv...)
	if err != nil {
		return nil, err
	}
	r.live = append(r.live, p)
	return p, nil
}

func (r *Runner) stopAll() {
	for i := len(r.live) - 1; i >= 0; i-- {
		r.live[i].stop(3 * time.Second)
	}
	r.live = nil
}

func (r *Runner) stopProcs(ps []*proc) {
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop(3 * time.Second)
	}
	keep := r.live[:0]
	for _, p := range r.live {
		if p.alive() {
			keep = append(keep, p)
		}
	}
	r.live = keep
}

// ---- targets ----

// topology says where the two sides of a pair live.
type topology struct {
	clientNS, serverNS string
	clientIP, serverIP string
	apps               map[string]string // echo apps, as the server side reaches them
}

func (r *Runner) loopbackTopo() topology {
	return topology{clientIP: "127.0.0.1", serverIP: "127.0.0.1", apps: r.apps}
}

// alloc returns a free host:port on host, in ns (the namespaces are ours:
// ports are simply counted there).
func (r *Runner) alloc(ns, host string) (string, error) {
	if ns == "" {
		p, err := freePort()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s:%d", host, p), nil
	}
	r.nsPort++
	return fmt.Sprintf("%s:%d", host, r.nsPort), nil
}

// liveTarget is a started target.
type liveTarget struct {
	name   string
	front  string // where the load generator connects
	ns     string // the load generator's namespace
	procs  []*proc
	sample []bench.Proc
}

// available reports whether target can carry app, and why not.
func (r *Runner) available(target, app string) (bool, string) {
	switch target {
	case CaddyH3:
		if r.opt.Caddy == "" {
			return false, "Caddy 2.11 is not installed"
		}
		if app == "tcp" {
			return false, "Caddy's reverse proxy carries HTTP only"
		}
	case HAProxyH2:
		if r.opt.HAProxy == "" {
			return false, "haproxy is not installed"
		}
	case Stunnel:
		if r.opt.Stunnel == "" {
			return false, "stunnel is not installed"
		}
	}
	return true, ""
}

func (r *Runner) writeConf(name, text string) (string, error) {
	p := r.path("conf", name)
	return p, os.WriteFile(p, []byte(text), 0o644)
}

// startTarget starts the processes of target for app kind app.
func (r *Runner) startTarget(ctx context.Context, target, app string, t topology, tag string) (*liveTarget, error) {
	lt := &liveTarget{name: target, ns: t.clientNS}
	appAddr := t.apps[app]
	fail := func(err error) (*liveTarget, error) {
		r.stopProcs(lt.procs)
		return nil, err
	}
	pair := func() (Pair, error) {
		front, err := r.alloc(t.clientNS, "127.0.0.1")
		if err != nil {
			return Pair{}, err
		}
		peer, err := r.alloc(t.serverNS, t.serverIP)
		return Pair{Front: front, Peer: peer, AppAddr: appAddr, App: app}, err
	}
	startSide := func(name, ns string, env []string, argv ...string) (*proc, error) {
		p, err := r.start(name+"-"+tag, ns, env, argv...)
		if err != nil {
			return nil, err
		}
		lt.procs = append(lt.procs, p)
		return p, nil
	}
	var pa Pair
	switch target {
	case Direct:
		lt.front = appAddr
		return lt, nil
	case Quicmesh:
		uB, err := r.alloc(t.serverNS, t.serverIP)
		if err != nil {
			return fail(err)
		}
		uA, err := r.alloc(t.clientNS, t.clientIP)
		if err != nil {
			return fail(err)
		}
		front, err := r.alloc(t.clientNS, "127.0.0.1")
		if err != nil {
			return fail(err)
		}
		disco, err := DiscoveryJSON(map[string]Endpoint{QuicmeshService(app): {Addr: uB, Identity: r.qmIDB}})
		if err != nil {
			return fail(err)
		}
		dpath, err := r.writeConf("services-"+tag+".json", string(disco))
		if err != nil {
			return fail(err)
		}
		b, err := startSide("quicmesh-b", t.serverNS, nil, append([]string{r.opt.Bin}, QuicmeshInboundArgs(r.qmB, uB, map[string]string{app: appAddr})...)...)
		if err != nil {
			return fail(err)
		}
		a, err := startSide("quicmesh-a", t.clientNS, nil, append([]string{r.opt.Bin}, QuicmeshOutboundArgs(r.qmA, uA, dpath, map[string]string{app: front})...)...)
		if err != nil {
			return fail(err)
		}
		lt.front = front
		lt.sample = []bench.Proc{{Name: "quicmesh-a", PID: a.PID()}, {Name: "quicmesh-b", PID: b.PID()}}
	case CaddyH3:
		var err error
		if pa, err = pair(); err != nil {
			return fail(err)
		}
		lt.front = pa.Front
		home := r.path("caddy-home")
		env := []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
		cb, err := r.writeConf("Caddyfile-b-"+tag, CaddyInbound(pa, r.certs, ""))
		if err != nil {
			return fail(err)
		}
		ca, err := r.writeConf("Caddyfile-a-"+tag, CaddyOutbound(pa, r.certs))
		if err != nil {
			return fail(err)
		}
		b, err := startSide("caddy-b", t.serverNS, env, r.opt.Caddy, "run", "--config", cb, "--adapter", "caddyfile")
		if err != nil {
			return fail(err)
		}
		a, err := startSide("caddy-a", t.clientNS, env, r.opt.Caddy, "run", "--config", ca, "--adapter", "caddyfile")
		if err != nil {
			return fail(err)
		}
		lt.sample = []bench.Proc{{Name: "caddy-a", PID: a.PID()}, {Name: "caddy-b", PID: b.PID()}}
	case HAProxyH2:
		var err error
		if pa, err = pair(); err != nil {
			return fail(err)
		}
		lt.front = pa.Front
		cb, err := r.writeConf("haproxy-b-"+tag+".cfg", HAProxyInbound(pa, r.certs))
		if err != nil {
			return fail(err)
		}
		ca, err := r.writeConf("haproxy-a-"+tag+".cfg", HAProxyOutbound(pa, r.certs))
		if err != nil {
			return fail(err)
		}
		b, err := startSide("haproxy-b", t.serverNS, nil, r.opt.HAProxy, "-db", "-f", cb)
		if err != nil {
			return fail(err)
		}
		a, err := startSide("haproxy-a", t.clientNS, nil, r.opt.HAProxy, "-db", "-f", ca)
		if err != nil {
			return fail(err)
		}
		lt.sample = []bench.Proc{{Name: "haproxy-a", PID: a.PID()}, {Name: "haproxy-b", PID: b.PID()}}
	case Stunnel:
		var err error
		if pa, err = pair(); err != nil {
			return fail(err)
		}
		lt.front = pa.Front
		cb, err := r.writeConf("stunnel-b-"+tag+".conf", StunnelInbound(pa, r.certs))
		if err != nil {
			return fail(err)
		}
		ca, err := r.writeConf("stunnel-a-"+tag+".conf", StunnelOutbound(pa, r.certs))
		if err != nil {
			return fail(err)
		}
		b, err := startSide("stunnel-b", t.serverNS, nil, r.opt.Stunnel, cb)
		if err != nil {
			return fail(err)
		}
		a, err := startSide("stunnel-a", t.clientNS, nil, r.opt.Stunnel, ca)
		if err != nil {
			return fail(err)
		}
		lt.sample = []bench.Proc{{Name: "stunnel-a", PID: a.PID()}, {Name: "stunnel-b", PID: b.PID()}}
	default:
		return nil, fmt.Errorf("unknown target %q", target)
	}
	if t.clientNS == "" {
		if err := waitTCP(ctx, lt.front, lt.procs[len(lt.procs)-1], 15*time.Second); err != nil {
			return fail(err)
		}
	}
	return lt, nil
}

// probe sends requests until one short run succeeds without errors, so a
// target is known to work before it is measured.
func (r *Runner) probe(ctx context.Context, l Load, lt *liveTarget) error {
	proto := l.Proto
	if proto == bench.ProtoTCPBulk {
		proto = bench.ProtoTCP
	}
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for attempt := 0; ; attempt++ {
		for _, p := range lt.procs {
			if !p.alive() {
				return fmt.Errorf("%s exited: %s", p.name, p.tail(600))
			}
		}
		argv := []string{r.opt.DevBin, "bench", "--proto", proto, "--target", l.TargetURL(lt.front),
			"--concurrency", "1", "--duration", "300ms", "--timeout", "3s", "--json", "-", "--quiet", "--no-progress"}
		if lt.ns != "" {
			argv = append([]string{"ip", "netns", "exec", lt.ns}, argv...)
		}
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		out, err := exec.CommandContext(pctx, argv[0], argv[1:]...).Output()
		cancel()
		var res bench.Result
		switch {
		case err != nil:
			last = err.Error()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				last += ": " + strings.TrimSpace(string(ee.Stderr))
			}
		case json.Unmarshal(out, &res) != nil:
			last = "unreadable result"
		case res.Requests > 0 && res.ErrorTotal == 0:
			return nil
		default:
			last = fmt.Sprintf("%d requests, errors %v", res.Requests, res.Errors)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s does not work: %s", lt.name, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(200*(attempt+1)) * time.Millisecond):
		}
	}
}

// startTargets starts and probes every target of l that can carry it.
func (r *Runner) startTargets(ctx context.Context, l Load, t topology, cond string) []*liveTarget {
	var lts []*liveTarget
	for _, name := range l.Targets {
		if ok, why := r.available(name, l.App()); !ok {
			r.note("%s: %s skipped: %s.", l.Title, name, why)
			continue
		}
		tag := l.ID + "-" + name
		lt, err := r.startTarget(ctx, name, l.App(), t, tag)
		if err == nil {
			if err = r.probe(ctx, l, lt); err != nil {
				r.stopProcs(lt.procs)
			}
		}
		if err != nil {
			r.note("%s: %s failed to start: %v", l.Title, name, err)
			r.res.Runs = append(r.res.Runs, Run{Load: l.ID, Cond: cond, Target: name, Round: 1, Error: err.Error()})
			continue
		}
		lts = append(lts, lt)
	}
	return lts
}

// ---- runs ----

func (r *Runner) runBench(ctx context.Context, l Load, cond string, lt *liveTarget, round int) Run {
	name := fmt.Sprintf("%s-%s-r%d", l.ID, lt.name, round)
	if cond != "" {
		name = fmt.Sprintf("%s-%s-%s-r%d", l.ID, slug(cond), lt.name, round)
	}
	jsonPath := filepath.Join(r.opt.OutDir, "runs", name+".json")
	argv := append([]string{r.opt.DevBin, "bench"}, l.BenchArgs(lt.front, jsonPath, lt.sample)...)
	if lt.ns != "" {
		argv = append([]string{"ip", "netns", "exec", lt.ns}, argv...)
	}
	run := Run{Load: l.ID, Cond: cond, Target: lt.name, Round: round, Command: shellQuote(argv)}
	for _, p := range lt.sample {
		run.Procs = append(run.Procs, p.Name)
	}
	for _, p := range lt.procs {
		if !p.alive() {
			run.Error = fmt.Sprintf("%s exited: %s", p.name, p.tail(400))
			r.logf("%s %s r%d %s: %s", l.ID, cond, round, lt.name, run.Error)
			return run
		}
	}
	_ = os.Remove(jsonPath)
	limit := l.Warmup + l.Duration + max(l.Timeout, bench.DefaultTimeout) + 30*time.Second
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(rctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	snap, t0 := procSnapshot("/proc"), time.Now()
	err := cmd.Run()
	run.OtherCores = otherCores(snap, t0)
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
	r.logRun(l, cond, lt.name, round, run)
	return run
}

func (r *Runner) logRun(l Load, cond, target string, round int, run Run) {
	where := l.ID
	if cond != "" {
		where += " [" + cond + "]"
	}
	if run.Error != "" {
		r.logf("%s r%d %-10s error: %s", where, round, target, run.Error)
		return
	}
	if res := run.Result; res != nil {
		cpu := 0.0
		for _, p := range res.Processes {
			cpu += p.CPUMicrosPerRequest
		}
		r.logf("%s r%d %-10s %9.0f rps  p50 %6d µs  p99 %7d µs  errors %d  unsent %d  proxy CPU %.0f µs/req  %.1f MiB/s  other CPU %.2f cores",
			where, round, target, res.RPS, res.LatencyUS.P50, res.LatencyUS.P99, res.ErrorTotal, res.Unsent, cpu, res.BytesPerSecond/(1<<20), run.OtherCores)
	}
	if f := run.Fortio; f != nil {
		r.logf("%s r%d %-10s fortio %7.0f qps  p50 %6.0f µs  p99 %7.0f µs  errors %d", where, round, target, f.ActualQPS, f.Percentile(50), f.Percentile(99), f.Errors)
	}
}

// otherCores is the CPU, in cores, that processes other than the runner's
// used since snapshot before was taken at t0.
func otherCores(before map[int]procTicks, t0 time.Time) float64 {
	secs := time.Since(t0).Seconds()
	if secs <= 0 {
		return 0
	}
	ticks := foreignTicks(before, procSnapshot("/proc"), os.Getpid())
	return math.Round(float64(ticks)/bench.ClockTicksPerSecond/secs*100) / 100
}

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

// ---- phases ----

func (r *Runner) loopbackPhase(ctx context.Context, l Load) {
	r.logf("== %s: %s", l.Title, l.Describe())
	lts := r.startTargets(ctx, l, r.loopbackTopo(), "")
	defer func() {
		for _, lt := range lts {
			r.stopProcs(lt.procs)
		}
	}()
	byName := map[string]*liveTarget{}
	var names []string
	for _, lt := range lts {
		byName[lt.name] = lt
		names = append(names, lt.name)
	}
	for round := 1; round <= r.opt.Plan.Rounds; round++ {
		for _, n := range Rotate(names, round-1) {
			if ctx.Err() != nil {
				return
			}
			r.res.Runs = append(r.res.Runs, r.runBench(ctx, l, "", byName[n], round))
		}
	}
}

// Subnets of the lossy-link scenarios, inside the lab's namespaces.
const (
	vethSubnet = "10.77.90.0/24"
	emuSubnet  = "10.77.91.0/24"
)

// lossyPhases runs the lossy-link loads in two network namespaces made
// with bench/netlab: the load generator and the outbound sidecars in
// "client", the inbound sidecars and the echo apps in "server". Loss-only
// conditions use a veth pair; conditions with delay use netlab's
// user-space TUN link emulator (tc netem is not available here). Loss is
// netlab's iptables random DROP on both sides, per packet.
func (r *Runner) lossyPhases(ctx context.Context, loads []Load) {
	if err := netlab.Available(); err != nil {
		r.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	lab, err := netlab.New("qmb")
	if err != nil {
		r.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	defer lab.Close()
	veth, err := lab.Pair("client", "server", vethSubnet)
	if err != nil {
		r.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	var emu *netlab.Link
	conds := r.opt.Plan.Conds
	if d := firstDelay(conds); d > 0 {
		if err := netlab.TUNAvailable(); err != nil {
			r.note("Delay was NOT emulated (%v): the delay conditions were dropped.", err)
		} else if emu, err = lab.DelayPair("client", "server", emuSubnet, d, 0); err != nil {
			r.note("Delay was NOT emulated (%v): the delay conditions were dropped.", err)
			emu = nil
		}
		if emu == nil {
			conds = withoutDelay(conds)
			r.res.Conds = conds
		}
	}
	// Apps in the server namespace; every link reaches them on its lo.
	apps := map[string]string{}
	var appProcs []*proc
	defer func() { r.stopProcs(appProcs) }()
	for _, kind := range []string{"grpc", "tcp"} {
		addr, _ := r.alloc(veth.NSB, "127.0.0.1")
		p, err := r.start("lossy-app-"+kind, veth.NSB, nil, r.opt.DevBin, "echo", "--proto", kind, "--listen", addr)
		if err != nil {
			r.note("Lossy-link scenarios skipped: %v", err)
			return
		}
		appProcs = append(appProcs, p)
		apps[kind] = addr
	}
	// All loads over the veth link first, then over the emulated one, so
	// that a tight budget drops the delay conditions first.
	for _, link := range []*netlab.Link{veth, emu} {
		var group []Cond
		for _, c := range conds {
			if link != nil && (c.Delay > 0) == (link == emu) {
				group = append(group, c)
			}
		}
		if len(group) == 0 {
			continue
		}
		for _, l := range loads {
			if ctx.Err() != nil || !r.fitsAs(l.Title+" over the "+linkKind(link == emu)+" link", l, r.opt.Plan.LossyRounds*len(group)*len(l.Targets)) {
				continue
			}
			r.logf("== %s over the %s link: %s", l.Title, linkKind(link == emu), l.Describe())
			r.lossyLink(ctx, l, link, link == emu, group, apps)
		}
	}
}

// lossyLink applies load l over one link under each of its conditions.
func (r *Runner) lossyLink(ctx context.Context, l Load, link *netlab.Link, emulated bool, conds []Cond, apps map[string]string) {
	t := topology{clientNS: link.NSA, serverNS: link.NSB, clientIP: link.AddrA.String(), serverIP: link.AddrB.String(), apps: apps}
	if err := link.SetLoss(0); err != nil {
		r.note("%s: %v", l.Title, err)
		return
	}
	if emulated {
		if err := link.SetDelay(conds[0].Delay, 0); err != nil {
			r.note("%s: %v", l.Title, err)
			return
		}
	}
	lts := r.startTargets(ctx, l, t, conds[0].Name)
	defer func() {
		for _, lt := range lts {
			r.stopProcs(lt.procs)
		}
		_ = link.SetLoss(0)
	}()
	var names []string
	byName := map[string]*liveTarget{}
	for _, lt := range lts {
		byName[lt.name] = lt
		names = append(names, lt.name)
	}
	for _, c := range conds {
		if ctx.Err() != nil {
			return
		}
		err := link.SetLoss(c.LossPct)
		if err == nil && emulated {
			err = link.SetDelay(c.Delay, 0)
		}
		if err != nil {
			r.note("%s, %s: %v", l.Title, c.Name, err)
			continue
		}
		for round := 1; round <= r.opt.Plan.LossyRounds; round++ {
			for _, n := range Rotate(names, round-1) {
				if ctx.Err() != nil {
					break
				}
				r.res.Runs = append(r.res.Runs, r.runBench(ctx, l, c.Name, byName[n], round))
			}
		}
		st := LinkStat{Load: l.ID, Cond: c.Name}
		st.LossDrops, _, _ = link.Drops()
		if emulated {
			ab, ba, _ := link.EmuStats()
			st.EmuForwarded, st.EmuQueueDrops = ab.Forwarded+ba.Forwarded, ab.QueueDrops+ba.QueueDrops
		}
		r.res.LinkStats = append(r.res.LinkStats, st)
	}
}

func linkKind(emulated bool) string {
	if emulated {
		return "emulated (delay)"
	}
	return "veth"
}

func firstDelay(cs []Cond) time.Duration {
	for _, c := range cs {
		if c.Delay > 0 {
			return c.Delay
		}
	}
	return 0
}

func withoutDelay(cs []Cond) []Cond {
	var out []Cond
	for _, c := range cs {
		if c.Delay == 0 {
			out = append(out, c)
		}
	}
	return out
}

// crossCheck runs fortio and quicmesh bench alternately against the direct
// HTTP/1.1 app at the same rate and concurrency, both with uniform pacing.
func (r *Runner) crossCheck(ctx context.Context, l Load) {
	r.logf("== %s: %s", l.Title, l.Describe())
	lt := &liveTarget{name: Direct, front: r.apps["http1"]}
	for round := 1; round <= r.opt.Plan.CrossRounds; round++ {
		order := []string{ToolFortio, ToolQuicmesh}
		if round%2 == 0 {
			order = []string{ToolQuicmesh, ToolFortio}
		}
		for _, tool := range order {
			if ctx.Err() != nil {
				return
			}
			if tool == ToolQuicmesh {
				r.res.Runs = append(r.res.Runs, r.runBench(ctx, l, "", lt, round))
				continue
			}
			r.res.Runs = append(r.res.Runs, r.runFortio(ctx, l, lt, round))
		}
	}
}

// FortioArgs are the fortio arguments equivalent to l against url: same
// rate, same number of connections (fortio: one per thread), uniform
// pacing, 10 µs histogram resolution (fortio's default 1 ms bucket would
// swamp sub-millisecond latencies).
func FortioArgs(l Load, url, jsonPath string) []string {
	return []string{"load", "-qps", fmtNum(l.Rate), "-c", strconv.Itoa(l.Concurrency), "-uniform",
		"-t", l.Duration.String(), "-r", "0.00001", "-loglevel", "Warning", "-json", jsonPath, url}
}

func (r *Runner) runFortio(ctx context.Context, l Load, lt *liveTarget, round int) Run {
	jsonPath := filepath.Join(r.opt.OutDir, "runs", fmt.Sprintf("%s-fortio-r%d.json", l.ID, round))
	argv := append([]string{r.opt.Fortio}, FortioArgs(l, l.TargetURL(lt.front), jsonPath)...)
	run := Run{Load: l.ID, Target: lt.name, Round: round, Tool: ToolFortio, Command: shellQuote(argv)}
	rctx, cancel := context.WithTimeout(ctx, l.Duration+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(rctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	snap, t0 := procSnapshot("/proc"), time.Now()
	err := cmd.Run()
	run.OtherCores = otherCores(snap, t0)
	if err != nil {
		run.Error = fmt.Sprintf("fortio: %v: %s", err, lastLines(out.String(), 5))
	} else if data, err := os.ReadFile(jsonPath); err != nil {
		run.Error = err.Error()
	} else if f, err := ParseFortio(data); err != nil {
		run.Error = err.Error()
	} else {
		run.Fortio = f
	}
	r.logRun(l, "", "fortio", round, run)
	return run
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// ---- peer checks and machine ----

// checkPeers proves that the Caddy pair's hop really is HTTP/3: a pair with
// an access log on the inbound side carries a few requests, and the log
// must show "proto":"HTTP/3.0". (The measured pairs run without access
// logs, which would cost them CPU.)
func (r *Runner) checkPeers(ctx context.Context) {
	if r.opt.Caddy == "" {
		return
	}
	l := Load{ID: "caddy-check", Proto: bench.ProtoHTTP1}
	pa := Pair{App: "http1", AppAddr: r.apps["http1"]}
	var err error
	if pa.Front, err = freeAddr(); err != nil {
		return
	}
	if pa.Peer, err = freeAddr(); err != nil {
		return
	}
	logPath, _ := filepath.Abs(r.path("logs", "caddy-check-access.log"))
	home := r.path("caddy-home")
	env := []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
	cb, _ := r.writeConf("Caddyfile-check-b", CaddyInbound(pa, r.certs, logPath))
	ca, _ := r.writeConf("Caddyfile-check-a", CaddyOutbound(pa, r.certs))
	b, err1 := r.start("caddy-check-b", "", env, r.opt.Caddy, "run", "--config", cb, "--adapter", "caddyfile")
	a, err2 := r.start("caddy-check-a", "", env, r.opt.Caddy, "run", "--config", ca, "--adapter", "caddyfile")
	var procs []*proc
	for _, p := range []*proc{b, a} {
		if p != nil {
			procs = append(procs, p)
		}
	}
	defer r.stopProcs(procs)
	if err := errors.Join(err1, err2); err != nil {
		r.note("Caddy check failed: %v; Caddy targets skipped.", err)
		r.opt.Caddy = ""
		return
	}
	lt := &liveTarget{name: CaddyH3, front: pa.Front, procs: procs}
	if err := waitTCP(ctx, pa.Front, a, 15*time.Second); err == nil {
		err = r.probe(ctx, l, lt)
	}
	h3, total := countProto(logPath, "HTTP/3.0")
	if err != nil || h3 == 0 {
		r.note("Caddy HTTP/3 check failed (%d of %d logged requests were HTTP/3.0, %v): Caddy targets skipped.", h3, total, err)
		r.opt.Caddy = ""
		return
	}
	r.note("Caddy pair verified: the inbound Caddy's access log shows \"proto\":\"HTTP/3.0\" for %d of %d requests of a check run (measured runs have no access log).", h3, total)
}

// countProto counts access-log lines whose "proto" is proto.
func countProto(path, proto string) (match, total int) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Request struct {
				Proto string `json:"proto"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Request.Proto == "" {
			continue
		}
		total++
		if line.Request.Proto == proto {
			match++
		}
	}
	return match, total
}

func (r *Runner) machine(ctx context.Context) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemMiB = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	out := func(argv ...string) string {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, _ := exec.CommandContext(c, argv[0], argv[1:]...).CombinedOutput()
		return strings.TrimSpace(string(b))
	}
	m.Commit = out("git", "rev-parse", "--short", "HEAD")
	if r.opt.Caddy != "" {
		m.Versions["caddy"] = CaddyModuleVersion(out("go", "version", "-m", r.opt.Caddy))
	}
	if r.opt.HAProxy != "" {
		m.Versions["haproxy"] = firstLine(out(r.opt.HAProxy, "-v"))
	}
	if r.opt.Stunnel != "" {
		for _, l := range strings.Split(out(r.opt.Stunnel, "-version"), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "stunnel ") {
				m.Versions["stunnel"] = strings.TrimSpace(l)
				break
			}
		}
	}
	if r.opt.Fortio != "" {
		m.Versions["fortio"] = firstLine(out(r.opt.Fortio, "version"))
	}
	if r.opt.OpenSSL != "" {
		m.Versions["openssl"] = firstLine(out(r.opt.OpenSSL, "version"))
	}
	return m
}

// CaddyModuleVersion extracts Caddy's module version from "go version -m"
// output ("caddy version" prints "unknown" for a go-installed binary).
func CaddyModuleVersion(goVersionM string) string {
	for _, l := range strings.Split(goVersionM, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == "mod" && f[1] == "github.com/caddyserver/caddy/v2" {
			return f[2]
		}
	}
	return "unknown"
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}
