package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
)

// sidecarCores is the most OS threads running Go code (GOMAXPROCS) a
// sidecar uses by default when no CPU limit says otherwise. A sidecar
// carries one app's traffic: on a 64-core node without a CPU limit Go's
// default would give it 64 Ps, each with its caches, up to 32 spinning
// threads looking for work and 16 dedicated GC workers, for a process
// that needs a fraction of a core. Two is Go's own floor under a CPU
// limit and Istio's long-standing sidecar default; one is cheaper per
// request but caps a busy tunnel at one core (docs/design.md, "Cores").
const sidecarCores = 2

// Where a process's GOMAXPROCS came from, as its start-up log says.
const (
	coresFromEnv      = "GOMAXPROCS"      // the operator's environment variable
	coresFromFlag     = "--cores"         // the flag, taken as given
	coresFromCPULimit = "CPU limit"       // Go's default, lowered by a CPU limit (cgroup quota)
	coresFromGo       = "Go default"      // Go's default: the CPUs the process may run on
	coresFromSidecar  = "sidecar default" // the CPUs the process may run on, capped at sidecarCores
)

// coresInput is what decides a process's GOMAXPROCS.
type coresInput struct {
	flag    int  // --cores; 0 is Go's default
	flagSet bool // --cores was given
	// env is $GOMAXPROCS. The runtime has applied it already when it is
	// a positive whole number, and then it wins.
	env string
	// goDefault is runtime.GOMAXPROCS(0) at start: $GOMAXPROCS, or Go's
	// default: the CPUs the process may run on (numCPU), lowered to a
	// CPU limit rounded up, never below 2 by a limit.
	goDefault int
	numCPU    int // runtime.NumCPU(): the CPUs in the affinity mask
	// limit caps the CPUs the process may run on when neither the flag,
	// $GOMAXPROCS nor a CPU limit says otherwise: sidecarCores for a
	// sidecar, 0 (no cap) for a gateway, which carries many peers'
	// traffic.
	limit int
}

// coresChoice is the GOMAXPROCS a process runs with.
type coresChoice struct {
	procs  int
	source string // one of the coresFrom constants
	// set: call runtime.GOMAXPROCS(procs). Otherwise the runtime's value
	// stands, and with it Go's own updates when the CPU limit changes.
	set bool
	// flagIgnored: --cores was given but $GOMAXPROCS wins.
	flagIgnored bool
	goDefault   int
}

// chooseCores decides a process's GOMAXPROCS: $GOMAXPROCS if set, else
// --cores if given (0: Go's default), else Go's default if a CPU limit
// lowered it, else the CPUs capped at in.limit. A CPU limit above the
// cap is the operator's word that the sidecar may use that much, as
// Linkerd's proxy-cpu-limit and Istio's concurrency derived from the
// limit take it. It changes nothing; processCores applies it.
func chooseCores(in coresInput) (coresChoice, error) {
	if in.flagSet && in.flag < 0 {
		return coresChoice{}, fmt.Errorf("--cores %d: must not be negative (0 is Go's default: every CPU the process may use, lowered to its CPU limit)", in.flag)
	}
	c := coresChoice{procs: in.goDefault, source: coresFromGo, goDefault: in.goDefault}
	// The runtime's own test: strconv.Atoi32(env) > 0, no spaces allowed.
	if n, err := strconv.Atoi(in.env); err == nil && n > 0 {
		c.source, c.flagIgnored = coresFromEnv, in.flagSet
		return c, nil
	}
	if in.goDefault < in.numCPU {
		c.source = coresFromCPULimit
	}
	switch {
	case in.flagSet && in.flag > 0:
		c.procs, c.source, c.set = in.flag, coresFromFlag, true
	case !in.flagSet && c.source == coresFromGo && in.limit > 0 && in.goDefault > in.limit:
		c.procs, c.source, c.set = in.limit, coresFromSidecar, true
	}
	return c, nil
}

// setGOMAXPROCS is runtime.GOMAXPROCS; the package's tests replace it, so
// that sidecars run in the test process leave its GOMAXPROCS alone.
var setGOMAXPROCS = runtime.GOMAXPROCS

// processCores decides this process's GOMAXPROCS from its flag and
// environment and applies it. limit is as in coresInput.
func processCores(flag int, flagSet bool, limit int) (coresChoice, error) {
	c, err := chooseCores(coresInput{flag: flag, flagSet: flagSet, env: os.Getenv("GOMAXPROCS"),
		goDefault: runtime.GOMAXPROCS(0), numCPU: runtime.NumCPU(), limit: limit})
	if err != nil {
		return coresChoice{}, err
	}
	if c.set {
		setGOMAXPROCS(c.procs)
	}
	return c, nil
}

// log reports the choice once at start: what runs, why, and what Go
// would have chosen on its own.
func (c coresChoice) log(log *slog.Logger) {
	attrs := []any{"gomaxprocs", c.procs, "source", c.source, "go_default", c.goDefault, "cpus", runtime.NumCPU()}
	if c.flagIgnored {
		log.Warn("cores: the GOMAXPROCS environment variable overrides --cores", attrs...)
		return
	}
	log.Info("cores", attrs...)
}

// coresUsage is the --cores flag's help, for the sidecar (capped) or the
// gateway (not capped).
func coresUsage(limit int) string {
	u := "most OS threads running Go code at once (GOMAXPROCS); 0: Go's default, every CPU the process may use, lowered to its CPU limit; $GOMAXPROCS overrides it"
	if limit > 0 {
		u += fmt.Sprintf(" (default: the CPU limit if there is one, else at most %d)", limit)
	} else {
		u += " (default 0)"
	}
	return u
}
