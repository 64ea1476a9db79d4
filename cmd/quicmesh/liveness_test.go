//go:build linux

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// Failure detection with real sidecar processes (issue 11, "What must
// hold"): kill -9 and SIGSTOP of the server-side sidecar under load. The
// sidecars are quicmesh built as it ships (no race detector: a sidecar
// under -race costs several times the CPU, and on a shared 2-core machine
// that alone made QUIC's RTT estimates, and with them every timer, grow
// by seconds); the test process, load generator included, may run with
// -race.

const webID = "spiffe://test.local/web"

// The SIGSTOP test's partition: 20 s at 300 GETs/s in make test; make
// bench runs it for 60 s at 500/s, the bound on what the client
// sidecar holds (docs/testing.md, "Process failure tests").
var (
	partitionFor  = flag.Duration("partition", 20*time.Second, "how long the SIGSTOP process test keeps the endpoint frozen")
	partitionRate = flag.Int("partition-rate", 300, "GETs per second the SIGSTOP process test offers")
)

// meshProc is a sidecar process with its identity files.
type meshProc struct {
	*sidecarProc
	cert, key, bundle string
}

// startMeshProc runs the quicmesh binary bin as `quicmesh proxy` on the
// given inbound address (empty: a free one) with info-level JSON logs.
func startMeshProc(t *testing.T, bin, dir, name, inbound, cert, key, bundle string, args ...string) *meshProc {
	t.Helper()
	if inbound == "" {
		inbound = freeMeshPort(t)
	}
	s := &sidecarProc{inbound: inbound, admin: freePort(t)}
	args = append([]string{"proxy", "--cert", cert, "--key", key, "--bundle", bundle,
		"--inbound", inbound, "--admin", s.admin, "--http-proxy", "", "--log-format", "json", "--grace", "2s"}, args...)
	s.process = startProcess(t, dir, name, 0, nil, bin, args...)
	s.waitReady(t)
	return &meshProc{sidecarProc: s, cert: cert, key: key, bundle: bundle}
}

// starved reports whether the sidecar's liveness watch found its own
// process starved of CPU (and started over, deferring to the idle
// timeout): timing bounds do not hold on such a machine, and the tests
// then report their measurements instead of asserting them.
func (s *meshProc) starved(t *testing.T) bool {
	return strings.Contains(s.logText(t), transport.LogStarved)
}

// freeze stops the process (SIGSTOP) and returns once every thread of
// it is stopped: the kernel tells the parent (waitid WSTOPPED) when the
// last thread has stopped. WNOWAIT leaves the child's state to cmd.Wait.
func (s *meshProc) freeze(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", s.name, err)
	}
	const cldStopped = 5 // CLD_STOPPED, <asm-generic/siginfo.h>
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, s.cmd.Process.Pid, &info, unix.WSTOPPED|unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("waiting for %s to stop: %v", s.name, err)
		}
		break
	}
	if info.Code != cldStopped {
		t.Fatalf("%s did not stop on SIGSTOP (waitid si_code %d): it exited", s.name, info.Code)
	}
}

// kill9 kills the process without a word (no CONNECTION_CLOSE, no drain).
func (s *meshProc) kill9(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// okApp is an HTTP/1.1 app answering "ok", counting what it serves.
func okApp(t *testing.T) (addr string, hits *atomic.Int64) {
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), hits
}

// discoveryFile lists the endpoints of service web.
func discoveryFile(t *testing.T, dir string, addrs ...string) string {
	type endpoint struct {
		Addr     string `json:"addr"`
		Identity string `json:"identity"`
	}
	var eps []endpoint
	for _, a := range addrs {
		eps = append(eps, endpoint{a, webID})
	}
	b, err := json.Marshal(map[string]any{"services": map[string]any{"web": map[string]any{"endpoints": eps}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "discovery.json")
	writeTestFile(t, path, b)
	return path
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

// TestSidecarProcessFailures runs the failure scenarios against one
// build of the sidecar.
func TestSidecarProcessFailures(t *testing.T) {
	bin := testkit.BuildQuicmesh(t, t.TempDir())
	t.Run("kill -9 one of two endpoints", func(t *testing.T) { kill9OneOfTwoEndpoints(t, bin) })
	t.Run("SIGTERM one of two endpoints", func(t *testing.T) { drainOneOfTwoEndpoints(t, bin) })
	// Not named SIGSTOP: make bench reruns those subtests with a long
	// partition, which this one does not use.
	t.Run("freeze one of two endpoints", func(t *testing.T) { freezeOneOfTwoEndpoints(t, bin) })
	for _, newKey := range []bool{false, true} {
		t.Run(fmt.Sprintf("kill -9 the only endpoint, restart with new key %v", newKey), func(t *testing.T) { kill9OnlyEndpoint(t, bin, newKey) })
	}
	for _, mode := range []string{"quic", "auto"} {
		t.Run("SIGSTOP the only endpoint, transport "+mode, func(t *testing.T) { frozenEndpoint(t, bin, mode) })
	}
}

// twoEndpointsUnderLoad starts service web on two sidecars (s1, s2) and a
// client sidecar, and GETs through the client at up to 500/s until both
// endpoints have served some.
func twoEndpointsUnderLoad(t *testing.T, bin string) (s1, s2, client *meshProc, l *testkit.RateLoad, hits1, hits2 *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, webID, "web")
	ccert, ckey, cbundle := workload(t, dir, "spiffe://test.local/client", "client")
	app1, hits1 := okApp(t)
	app2, hits2 := okApp(t)
	s1 = startMeshProc(t, bin, dir, "s1", "", cert, key, bundle, "--route", "web=http://"+app1)
	s2 = startMeshProc(t, bin, dir, "s2", "", cert, key, bundle, "--route", "web=http://"+app2)
	bind := freePort(t)
	client = startMeshProc(t, bin, dir, "client", "", ccert, ckey, cbundle, "--discovery-file", discoveryFile(t, dir, s1.inbound, s2.inbound), "--bind", bind+"=web")
	l = testkit.StartRateLoad(t, "http://"+bind+"/", 500, 64)
	testkit.Eventually(t, "both endpoints serving", func() bool { return hits1.Load() > 50 && hits2.Load() > 50 })
	return s1, s2, client, l, hits1, hits2
}

// One of a service's two endpoints is killed (kill -9 of its sidecar)
// while the client sidecar carries GETs at up to 500/s: no GET fails.
// What was in flight to the dead endpoint fails over once the liveness
// watch declares the connection dead (about a second), and the failure
// accrual keeps new requests away from it.
func kill9OneOfTwoEndpoints(t *testing.T, bin string) {
	_, s2, _, l, hits1, hits2 := twoEndpointsUnderLoad(t, bin)
	s2.kill9(t)
	killed := time.Now()
	// Past the first ejection period (1 s) and its probe, under load.
	served := l.Served()
	testkit.Eventually(t, "load served after the kill", func() bool { return time.Since(killed) > 5*time.Second && l.Served() > served+200 })
	outcomes := l.Finish()

	var failed []string
	var slowest time.Duration
	var lat []time.Duration
	for _, o := range outcomes {
		lat = append(lat, o.Took)
		slowest = max(slowest, o.Took)
		if o.Err != "" {
			failed = append(failed, fmt.Sprintf("started %v after the kill, failed after %v: %s", o.Start.Sub(killed).Round(time.Millisecond), o.Took.Round(time.Millisecond), o.Err))
		}
	}
	t.Logf("%d GETs over %v (%d after the kill, served by s1 %d / s2 %d); p50 %v, p99 %v, slowest %v",
		len(outcomes), time.Since(outcomes[0].Start).Round(time.Second), len(outcomes)-countBefore(outcomes, killed), hits1.Load(), hits2.Load(),
		percentile(lat, 0.5).Round(time.Millisecond), percentile(lat, 0.99).Round(time.Millisecond), slowest.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Fatalf("%d of %d GETs failed; first: %s", len(failed), len(outcomes), strings.Join(failed[:min(len(failed), 5)], "; "))
	}
}

// One of a service's two endpoints is frozen (SIGSTOP of its sidecar)
// while the client sidecar carries GETs at up to 500/s over the default
// transport (auto): no GET fails, and those caught on the frozen
// endpoint go to the other one once the liveness watch declares it dead
// (about a second). The client sidecar's QUIC connection to the frozen
// process dies of silence, and the kernel of that process still takes a
// TCP connect: the GETs must not wait on the frozen peer over TCP before
// they go to the healthy endpoint, so the slowest takes the liveness
// verdict (up to twice the liveness timeout when the client stalls) and
// the retry, within the SIGSTOP test's bound.
func freezeOneOfTwoEndpoints(t *testing.T, bin string) {
	_, s2, client, l, hits1, hits2 := twoEndpointsUnderLoad(t, bin)
	t.Cleanup(func() { s2.cmd.Process.Signal(syscall.SIGCONT) })
	s2.freeze(t)
	frozen := time.Now()
	served := l.Served()
	testkit.Eventually(t, "load served after the freeze", func() bool { return time.Since(frozen) > 3*time.Second && l.Served() > served+200 })
	outcomes := l.Finish()

	limits := transport.Limits{}.WithDefaults()
	bound := 2*limits.LivenessTimeout + time.Second/2
	var failed []string
	var caught []time.Duration // started within the liveness timeout of the freeze
	for _, o := range outcomes {
		if !o.Start.Before(frozen.Add(-100*time.Millisecond)) && o.Start.Before(frozen.Add(limits.LivenessTimeout)) {
			caught = append(caught, o.Took)
		}
		if o.Err != "" {
			failed = append(failed, fmt.Sprintf("started %v after the freeze, failed after %v: %s", o.Start.Sub(frozen).Round(time.Millisecond), o.Took.Round(time.Millisecond), o.Err))
		}
	}
	slowest := slices.Max(append(caught, 0))
	t.Logf("%d GETs (%d started within %v of the freeze: p50 %v, p99 %v, slowest %v); served by s1 %d / s2 %d",
		len(outcomes), len(caught), limits.LivenessTimeout, percentile(caught, 0.5).Round(time.Millisecond), percentile(caught, 0.99).Round(time.Millisecond), slowest.Round(time.Millisecond), hits1.Load(), hits2.Load())
	if len(failed) > 0 {
		t.Fatalf("%d of %d GETs failed; first: %s", len(failed), len(outcomes), strings.Join(failed[:min(len(failed), 5)], "; "))
	}
	if client.starved(t) {
		t.Logf("the client sidecar was starved of CPU (%q in its log): timing not asserted", transport.LogStarved)
		return
	}
	if slowest > bound {
		t.Errorf("a GET caught on the frozen endpoint took %v to be served by the other; want at most %v", slowest, bound)
	}
}

// One of a service's two endpoints is told to stop (SIGTERM: it drains
// for its grace period) while the client sidecar carries GETs at up to
// 500/s: no GET fails, and the GETs started while it drains are as fast
// as before (issue 11: "no request takes longer than 2x its normal p99").
// The draining sidecar sends GOAWAY on the connection it has and refuses
// new ones, so new requests go to the other endpoint within a round
// trip; what it was serving finishes.
//
// The drain lasts as long as s2 takes to finish what it serves (a few
// hundred ms); a loaded machine can run the load generator so slowly that
// fewer than 20 GETs start in it (16 at load 40, the GETs' p50 214 ms),
// or stop this process, which sends and times the GETs, long enough to
// make one of a window of ~50 GETs (its p99 is its slowest) slower than
// anything in the normal window (90 ms against 62 ms at load 38): then
// nothing was measured, and the scenario runs again with new sidecars,
// until the hang guard. A drain that stalls requests still fails: it
// does so in an attempt in which this process ran.
func drainOneOfTwoEndpoints(t *testing.T, bin string) {
	guard := testkit.HangGuard(t)
	for attempt := 1; ; attempt++ {
		measured := false
		t.Run(fmt.Sprintf("attempt %d", attempt), func(t *testing.T) { measured = drainOnce(t, bin) })
		if measured || t.Failed() {
			return
		}
		if time.Now().After(guard) {
			t.Fatalf("%d attempts, each with fewer than 20 GETs while s2 drained, or too slow a GET while this process was starved: nothing measured", attempt)
		}
	}
}

// drainOnce runs drainOneOfTwoEndpoints's scenario once; false: its
// timing was not measured (fewer than 20 GETs started while s2 drained,
// or the check failed while this process was starved).
func drainOnce(t *testing.T, bin string) (measured bool) {
	_, s2, client, l, hits1, hits2 := twoEndpointsUnderLoad(t, bin)
	// A normal stretch to compare with, then the drain.
	normalFrom := time.Now()
	testkit.Eventually(t, "500 GETs served normally", func() bool { return time.Since(normalFrom) > 2*time.Second && l.Served() > 500 })
	sw := testkit.NewSchedWatch()
	defer sw.Stop()
	s2.cmd.Process.Signal(syscall.SIGTERM)
	term := time.Now()
	sw.Starved(0) // the drain's interval starts
	served := l.Served()
	select {
	case <-s2.done:
	case <-time.After(time.Until(testkit.HangGuard(t))):
		t.Fatal("the drained sidecar did not exit")
	}
	exited := time.Since(term)
	testkit.Eventually(t, "load served after the drain", func() bool { return l.Served() > served+500 })
	outcomes := l.Finish()

	var normal, draining []time.Duration
	var failed []string
	for _, o := range outcomes {
		switch {
		case o.Start.After(normalFrom) && o.Start.Before(term):
			normal = append(normal, o.Took)
		case !o.Start.Before(term) && o.Start.Before(term.Add(exited)):
			draining = append(draining, o.Took)
		}
		if o.Err != "" {
			failed = append(failed, fmt.Sprintf("started %v after SIGTERM, failed after %v: %s", o.Start.Sub(term).Round(time.Millisecond), o.Took.Round(time.Millisecond), o.Err))
		}
	}
	p99, drainP99 := percentile(normal, 0.99), percentile(draining, 0.99)
	slowest := slices.Max(append(draining, 0))
	t.Logf("normal: %d GETs, p50 %v p99 %v; while s2 drained (%v until it exited): %d GETs, p50 %v p99 %v slowest %v; served by s1 %d / s2 %d",
		len(normal), percentile(normal, 0.5), p99, exited.Round(time.Millisecond), len(draining), percentile(draining, 0.5), drainP99, slowest, hits1.Load(), hits2.Load())
	if len(failed) > 0 {
		t.Fatalf("%d of %d GETs failed; first: %s", len(failed), len(outcomes), strings.Join(failed[:min(len(failed), 5)], "; "))
	}
	if len(draining) < 20 {
		t.Logf("only %d GETs while s2 drained: nothing measured, running it again", len(draining))
		return false
	}
	// The p99 of the drain window against twice the normal one, and
	// against the slowest GET of the normal window: the drain window has
	// ~100 GETs, so its p99 is its second slowest, and one scheduling
	// hiccup of a busy machine put it at 2.7x the normal p99 in a make
	// test run (28 ms, 10 ms). A drain that stalls requests (a wait for
	// a timeout, a redial) takes longer than anything the normal window
	// saw; the client's starvation line says when timing cannot hold.
	// The shortest such wait is the client's first back-off after a
	// refused dial (transport.Backoff(1)); a drain p99 under half of it
	// is scheduling noise of a busy machine, not a stall (two-hog runs:
	// 24-26 ms against a normal slowest of 17-22 ms).
	normalMax := slices.Max(append(normal, 0))
	stall := transport.Backoff(1) / 2
	if drainP99 > 2*p99 && drainP99 > normalMax && drainP99 > stall && !client.starved(t) {
		if sw.Starved(drainP99 / 2) {
			t.Logf("drain p99 %v (normal p99 %v, slowest %v) while this process waited %v or more to run: measured again", drainP99, p99, normalMax, drainP99/2)
			return false
		}
		t.Fatalf("GETs while an endpoint drained: p99 %v, more than twice the normal p99 %v, above the normal window's slowest %v and above %v (half the shortest back-off)", drainP99, p99, normalMax, stall)
	}
	return true
}

func countBefore(os []testkit.Outcome, t time.Time) int {
	n := 0
	for _, o := range os {
		if o.Start.Before(t) {
			n++
		}
	}
	return n
}

// The only endpoint of a service is killed (kill -9) under load and
// restarted on the same address 3 s later, with the same key or a new
// one: meanwhile every request fails fast (the client sidecar answers
// 502/503 within about the liveness timeout, none waits for a client
// timeout), and once the endpoint is ready again traffic is back within
// about a second.
func kill9OnlyEndpoint(t *testing.T, bin string, newKey bool) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, webID, "web")
	ccert, ckey, cbundle := workload(t, dir, "spiffe://test.local/client", "client")
	app, hits := okApp(t)
	srv := startMeshProc(t, bin, dir, "server", "", cert, key, bundle, "--route", "web=http://"+app)
	bind := freePort(t)
	client := startMeshProc(t, bin, dir, "client", "", ccert, ckey, cbundle, "--discovery-file", discoveryFile(t, dir, srv.inbound), "--bind", bind+"=web")
	limits := transport.Limits{}.WithDefaults()

	l := testkit.StartRateLoad(t, "http://"+bind+"/", 200, 64)
	testkit.Eventually(t, "the endpoint serving", func() bool { return hits.Load() > 50 })
	srv.kill9(t)
	killed := time.Now()
	time.Sleep(3 * time.Second)
	if newKey {
		cert, key, bundle = workload(t, dir, webID, "web-new")
	}
	restartAt := time.Now()
	startMeshProc(t, bin, dir, "server-again", srv.inbound, cert, key, bundle, "--route", "web=http://"+app)
	back := time.Now()
	served := l.Served()
	testkit.Eventually(t, "load served after the restart", func() bool { return l.Served() > served+200 })
	outcomes := l.Finish()

	// Requests that failed: each within the liveness timeout plus
	// the watch's polls (those in flight at the kill) or at once
	// (the endpoint in back-off); none hung.
	var failed int
	var slowestFail time.Duration
	var slowestStart time.Time
	var failTook []time.Duration
	firstOK := time.Time{}
	for _, o := range outcomes {
		if o.Err != "" {
			failed++
			if o.Took > slowestFail {
				slowestFail, slowestStart = o.Took, o.Start
			}
			failTook = append(failTook, o.Took)
		} else if o.Start.After(back) && (firstOK.IsZero() || o.Start.Add(o.Took).Before(firstOK)) {
			firstOK = o.Start.Add(o.Took)
		}
	}
	var lateFail []string
	for _, o := range outcomes {
		// Failures well after the endpoint was back are not the
		// outage's.
		if o.Err != "" && o.Start.After(back.Add(2*time.Second)) {
			lateFail = append(lateFail, fmt.Sprintf("started %v after the restart: %s", o.Start.Sub(back).Round(time.Millisecond), o.Err))
		}
	}
	t.Logf("%d requests, %d failed (p50 %v, p99 %v, slowest %v, started %v after the kill); restarted process ready %v after its start; first request served %v after it was ready",
		len(outcomes), failed, percentile(failTook, 0.5).Round(time.Millisecond), percentile(failTook, 0.99).Round(time.Millisecond), slowestFail.Round(time.Millisecond), slowestStart.Sub(killed).Round(time.Millisecond),
		back.Sub(restartAt).Round(time.Millisecond), firstOK.Sub(back).Round(time.Millisecond))
	if client.starved(t) {
		t.Logf("the client sidecar was starved of CPU (%q in its log): timing not asserted", transport.LogStarved)
		return
	}
	if failed == 0 {
		t.Fatalf("no request failed while the only endpoint was down for %v", back.Sub(killed))
	}
	// 1 s, the bound: the killed sidecar's port answers ICMP
	// port unreachable, which the liveness watch's probe hears after
	// one silent poll (250 ms; requests in flight at the kill fail
	// within two polls), and so does the probe of every dial to it:
	// measured p99 0.39-0.48 s, slowest 0.41-0.50 s (load 15), where
	// silence alone (the liveness timeout and its polls) took 1.2 s.
	if bound := limits.LivenessTimeout; slowestFail > bound {
		t.Errorf("a request to the dead endpoint took %v to fail; want at most %v", slowestFail, bound)
	}
	if d := firstOK.Sub(back); d > time.Second {
		t.Errorf("traffic came back %v after the endpoint was ready; want within 1 s", d)
	}
	if len(lateFail) > 0 {
		t.Errorf("%d requests failed after traffic came back: %s", len(lateFail), strings.Join(lateFail[:min(5, len(lateFail))], "; "))
	}
}

// The only endpoint's sidecar is frozen (SIGSTOP: its sockets stay open,
// nothing answers) for -partition (20 s) under -partition-rate GETs/s
// (300): every request fails within 2 s
// (in flight: the liveness watch; later ones at once, the peer in
// back-off, or within the connect timeout of a probe), the client
// sidecar's goroutines and open files stay bounded instead of growing
// with the requests that would otherwise hang, and traffic returns once
// the endpoint is thawed (SIGCONT). In auto mode a request in flight at
// the freeze is re-sent towards TCP after the liveness watch gave up on
// QUIC (the kernel accepts the connect; the frozen process never sends
// its ServerHello): the fallback policy waits for that no longer than
// its suspect wait (500 ms) and then fails the peer's requests at once
// during its back-off, so the bound is the same as over QUIC alone.
//
// The 2 s are the liveness timeout (1 s), up to two polls of the watch,
// and the failure reaching the app; a loaded machine (measured: load 25
// on 2 cores) adds up to half a second to the last part, hence the slack.
func frozenEndpoint(t *testing.T, bin, mode string) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, webID, "web")
	ccert, ckey, cbundle := workload(t, dir, "spiffe://test.local/client", "client")
	app, hits := okApp(t)
	srv := startMeshProc(t, bin, dir, "server", "", cert, key, bundle, "--route", "web=http://"+app, "--transport", mode)
	bind := freePort(t)
	client := startMeshProc(t, bin, dir, "client", "", ccert, ckey, cbundle, "--discovery-file", discoveryFile(t, dir, srv.inbound), "--bind", bind+"=web", "--transport", mode)
	limits := transport.Limits{}.WithDefaults()
	bound := 2*limits.LivenessTimeout + time.Second/2
	resources := func() (goroutines, fds float64) {
		return client.metric(t, "go_goroutines"), client.metric(t, "process_open_fds")
	}

	const inFlight = 512 // room for requests to pile up if they hung
	l := testkit.StartRateLoad(t, "http://"+bind+"/", *partitionRate, inFlight)
	testkit.Eventually(t, "the endpoint serving", func() bool { return hits.Load() > 200 })
	var healthyG, healthyF float64
	for range 3 {
		g, f := resources()
		healthyG, healthyF = max(healthyG, g), max(healthyF, f)
		time.Sleep(500 * time.Millisecond)
	}
	signalled := time.Now()
	t.Cleanup(func() { srv.cmd.Process.Signal(syscall.SIGCONT) })
	srv.freeze(t)
	// The instant the whole process is known to be stopped: a request
	// that starts after it cannot be served before the thaw. Kill
	// returns once the signal is queued, and the process stops only when
	// its threads next get a CPU and take it, which on a loaded machine
	// can be tens of ms later: requests started in between may be served
	// (3 were at load 15, at 300/s), and were counted as served during
	// the freeze.
	frozen := time.Now()
	// The requests in flight at the freeze (about the rate times the
	// liveness timeout) are a transient; after it, what the sidecar holds
	// must not grow with the length of the partition.
	var peakG, peakF, maxG, maxF float64
	var maxInFlight int64
	for time.Since(frozen) < *partitionFor {
		time.Sleep(time.Second)
		g, f := resources()
		peakG, peakF = max(peakG, g), max(peakF, f)
		if time.Since(frozen) > bound+2*time.Second {
			maxG, maxF = max(maxG, g), max(maxF, f)
		}
		maxInFlight = max(maxInFlight, l.InFlight())
	}
	srv.cmd.Process.Signal(syscall.SIGCONT)
	thawed := time.Now()
	served := l.Served()
	testkit.Eventually(t, "load served after the thaw", func() bool { return l.Served() > served+100 })
	back := time.Since(thawed)
	outcomes := l.Finish()

	var during []time.Duration
	var slow, servedDuring []string
	var stopping int
	var servedStopping []time.Duration
	for _, o := range outcomes {
		if !o.Start.Before(signalled) && o.Start.Before(frozen) {
			stopping++
			if o.Err == "" {
				servedStopping = append(servedStopping, o.Took.Round(time.Microsecond))
			}
		}
		// What may be served: requests started before the process was
		// stopped (those started after SIGSTOP was sent but before it
		// took effect included: the server may still have answered
		// them), and requests started within the bound of the thaw,
		// which may be served after it: a request may wait up to the
		// bound for its answer (one started 2.3 s before the thaw, in
		// auto mode, was). Any other request's bytes reached a stopped
		// process, which can answer only after the thaw, by when the
		// request must have failed (the liveness watch, then the
		// back-off): one served took longer than the bound too.
		if o.Start.Before(frozen) || o.Start.After(thawed.Add(-bound)) {
			continue
		}
		during = append(during, o.Took)
		if o.Err == "" {
			servedDuring = append(servedDuring, fmt.Sprintf("started %v into the freeze (%v before the thaw), took %v", o.Start.Sub(frozen).Round(time.Millisecond), thawed.Sub(o.Start).Round(time.Millisecond), o.Took.Round(time.Millisecond)))
		}
		if o.Took > bound {
			outcome := "failed: " + o.Err
			if o.Err == "" {
				outcome = "was served"
			}
			slow = append(slow, fmt.Sprintf("started %v into the freeze, took %v, %s", o.Start.Sub(frozen).Round(time.Millisecond), o.Took.Round(time.Millisecond), outcome))
		}
	}
	t.Logf("the process stopped %v after SIGSTOP was sent; %d requests started meanwhile, %d of them served (taking %v)", frozen.Sub(signalled).Round(time.Microsecond), stopping, len(servedStopping), servedStopping)
	t.Logf("during the %v freeze at %d GETs/s: %d requests failed (p50 %v, p99 %v, slowest %v), at most %d in flight; client sidecar: goroutines %v healthy / %v at the freeze / %v at most after it, open files %v / %v / %v; traffic back %v after the thaw",
		*partitionFor, *partitionRate, len(during), percentile(during, 0.5).Round(time.Millisecond), percentile(during, 0.99).Round(time.Millisecond), percentile(during, 1).Round(time.Millisecond),
		maxInFlight, healthyG, peakG, maxG, healthyF, peakF, maxF, back.Round(time.Millisecond))
	if client.starved(t) {
		t.Logf("the client sidecar was starved of CPU (%q in its log): timing not asserted", transport.LogStarved)
		return
	}
	if len(servedDuring) > 0 {
		t.Errorf("%d requests started during the freeze were served; first: %s", len(servedDuring), strings.Join(servedDuring[:min(5, len(servedDuring))], "; "))
	}
	if len(slow) > 0 {
		t.Errorf("%d of %d requests during the freeze took over %v; first: %s", len(slow), len(during), bound, strings.Join(slow[:min(5, len(slow))], "; "))
	}
	// Hanging requests (the 60 s idle timeout of old) would have filled
	// the load's 512 slots and grown the sidecar by over a thousand
	// goroutines and hundreds of files in 20 s. The bound does not grow
	// with the partition's length: what the sidecar holds must not.
	if maxInFlight >= inFlight || maxG > 2*healthyG+300 || maxF > 2*healthyF+100 {
		t.Errorf("resources grew during the freeze: %d requests in flight, goroutines %v (healthy %v), open files %v (healthy %v)", maxInFlight, maxG, healthyG, maxF, healthyF)
	}
}
