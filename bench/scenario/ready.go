package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

// Readiness: before a target is measured, the runner waits until it
// really serves. A front port that accepts TCP is not enough: behind it
// the first requests may still wait for the sidecars' own connections
// (the QUIC handshake between the pair, the inbound side's connections to
// the app), which at load 30 on two cores outlasted a 1.5 s window (grpc-1k
// through quicmesh: 0 requests, 1,000 unsent). So every measured run is
// preceded by readiness rounds of the load's own kind through the target's
// front, retried until one succeeds or readyWithin has passed. They are
// separate load generator runs: nothing of them is in the measured figures.

// requestTimeout is how long one request of l may take.
func (l Load) requestTimeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return bench.DefaultTimeout
}

// readyWithin is how long a target of l has to become ready: two request
// timeouts, one for a round whose requests all wait out a connection
// setup that fails, one for a retry that finds it done.
func (l Load) readyWithin() time.Duration { return 2 * l.requestTimeout() }

// readyWindow is the schedule of a readiness round: one slot per worker
// falls in it, so the round is one request per worker, sent within it. A
// worker that starts after the window sends nothing (its slot is
// unsent): 1 ms was too short for 32 HTTP/1.1 workers even on a quiet
// machine, 50 ms leaves the round cheap (about 50 ms when the target
// answers at once).
const readyWindow = 50 * time.Millisecond

// readyConfig is one readiness round of l against front: each of l's
// workers sends one request of l's kind (open loop, whatever l's model), over l's connections and with
// l's request timeout, so the sidecars' connections and pools are set up
// for as many concurrent requests as the measured run sends. The bulk
// load, closed loop only, is probed with echo round trips on its
// connection.
func readyConfig(l Load, front string) bench.Config {
	proto, payload := l.Proto, l.Payload
	if proto == bench.ProtoTCPBulk {
		proto, payload = bench.ProtoTCP, 0
	}
	n := max(l.Concurrency, 1)
	return bench.Config{
		Proto: proto, Target: l.TargetURL(front),
		Rate: float64(n) / readyWindow.Seconds(), Duration: readyWindow,
		Concurrency: n, Connections: l.Connections, Payload: payload,
		Timeout: l.requestTimeout(),
	}
}

// readyArgs are the "quicmesh-dev bench" arguments of cfg, for a target
// in a network namespace (the runner's own process is in the host's).
func readyArgs(cfg bench.Config) []string {
	a := []string{"--proto", cfg.Proto, "--target", cfg.Target,
		"--rate", strconv.FormatFloat(cfg.Rate, 'f', -1, 64),
		"--concurrency", strconv.Itoa(cfg.Concurrency), "--duration", cfg.Duration.String(),
		"--timeout", cfg.Timeout.String(), "--json", "-", "--quiet", "--no-progress"}
	if cfg.Connections > 0 {
		a = append(a, "--connections", strconv.Itoa(cfg.Connections))
	}
	if cfg.Payload > 0 {
		a = append(a, "--payload", strconv.Itoa(cfg.Payload))
	}
	return a
}

// readyRound runs one readiness round: in this process for a target in
// the host's namespace, with the load generator's binary in ns otherwise.
func (g loadGen) readyRound(ctx context.Context, ns string, cfg bench.Config) (*bench.Result, error) {
	if ns == "" {
		return bench.Run(ctx, cfg)
	}
	argv := inNS(ns, append([]string{g.devBin, "bench"}, readyArgs(cfg)...))
	// The round ends by itself within the timeout (connections are set
	// up within it, then each request has it); the margin is for
	// starting the process on a busy machine.
	rctx, cancel := context.WithTimeout(ctx, 3*cfg.Timeout)
	defer cancel()
	out, err := exec.CommandContext(rctx, argv[0], argv[1:]...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, err
	}
	var res bench.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("unreadable result: %w", err)
	}
	return &res, nil
}

// ready waits until lt serves l: a readiness round in which at least one
// request is answered and none fails, or, over a lossy link (lossy),
// some fail: the link's condition, which the measured run records, may
// lose a request to its timeout. It retries until l.readyWithin has
// passed, then returns an error naming the target and the last failure.
func (g loadGen) ready(ctx context.Context, l Load, lt *liveTarget, lossy bool) error {
	cfg := readyConfig(l, lt.front)
	within := l.readyWithin()
	deadline := time.Now().Add(within)
	var last string
	for attempt := 1; ; attempt++ {
		if err := exited(lt.procs, 600); err != nil {
			return err
		}
		res, err := g.readyRound(ctx, lt.ns, cfg)
		switch {
		case err != nil:
			last = err.Error()
		case res.Requests > res.ErrorTotal && (res.ErrorTotal == 0 || lossy):
			return nil
		default:
			last = roundFailure(res)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s not ready: %w (last attempt: %s)", lt.name, ctx.Err(), last)
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s not ready after %s (%d attempts): %s", lt.name, within, attempt, last)
		}
		// A failed round took up to a request timeout; one that failed
		// at once (connection refused) is retried soon, then less often.
		pause := min(time.Duration(attempt)*50*time.Millisecond, cfg.Timeout/10, time.Until(deadline))
		select {
		case <-ctx.Done():
		case <-time.After(max(pause, 0)):
		}
	}
}

// roundFailure says what went wrong in a readiness round that answered
// nothing or had errors.
func roundFailure(res *bench.Result) string {
	if res.ErrorTotal == 0 {
		return fmt.Sprintf("no request answered (%d unsent)", res.Unsent)
	}
	kinds := make([]string, 0, len(res.Errors))
	for k, n := range res.Errors {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	return fmt.Sprintf("%d of %d requests failed: %s", res.ErrorTotal, res.Requests, strings.Join(kinds, ", "))
}
