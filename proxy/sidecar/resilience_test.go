package sidecar_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/outbound"
)

// load offers GETs to url at about rate per second (fewer if the machine
// cannot keep up), each on its own goroutine, until stop; wait returns
// once every request has ended.
type load struct {
	done, failed atomic.Int64
	// from: only requests started at or after it (unix nanoseconds)
	// are counted as failed, none before countFrom.
	from       atomic.Int64
	maxLatency atomic.Int64 // nanoseconds
	mu         sync.Mutex
	failures   []string // the first few
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startLoad(t *testing.T, c *http.Client, url string, rate int) *load {
	l := &load{stop: make(chan struct{})}
	ctx := testkit.HangCtx(t)
	l.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		// A bounded number in flight: on a starved machine more would
		// only queue (at the apps' accept loops, too) until something
		// times out, which is not what the tests using it ask about.
		inflight := make(chan struct{}, 64)
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			select {
			case inflight <- struct{}{}:
			default:
				continue // the machine cannot keep up: offer less
			}
			l.wg.Go(func() {
				defer func() { <-inflight }()
				l.one(ctx, c, url)
			})
		}
	})
	return l
}

func (l *load) one(ctx context.Context, c *http.Client, url string) {
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := c.Do(req)
	status := 0
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	took := time.Since(start)
	for {
		cur := l.maxLatency.Load()
		if int64(took) <= cur || l.maxLatency.CompareAndSwap(cur, int64(took)) {
			break
		}
	}
	l.done.Add(1)
	if from := l.from.Load(); (err != nil || status != http.StatusOK) && from != 0 && start.UnixNano() >= from {
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.failures) < 5 {
			msg := fmt.Sprint(err)
			if resp != nil {
				msg = fmt.Sprintf("%d %s", status, resp.Header.Get(httpx.HeaderProxyError))
			}
			l.failures = append(l.failures, fmt.Sprintf("after %v: %s", took.Round(time.Millisecond), msg))
		}
		l.mu.Unlock()
	}
}

// countFrom counts failures of the requests started from now on only:
// on a starved machine the first dials can time out (DialTimeout 1 s)
// before either endpoint ever served, which is not what a test of an
// endpoint's death asks about.
func (l *load) countFrom() { l.from.Store(time.Now().UnixNano()) }

func (l *load) wait() {
	close(l.stop)
	l.wg.Wait()
}

// One of a service's two endpoints stops answering under load (its
// sidecar's UDP socket closed, as after kill -9: no CONNECTION_CLOSE, no
// stateless reset): no GET fails. Requests already
// sent to it are retried on the other endpoint once the transport
// declares the connection dead, which ejects the endpoint from
// balancing; probes of it fail over to the other endpoint too.
func TestEndpointDeathLosesNoIdempotentRequest(t *testing.T) {
	m := meshtest.New(t)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	live := m.HTTPApp("live", meshtest.H1, ok)
	doomed := m.HTTPApp("doomed", meshtest.H1, ok)
	m.Start("s1", meshtest.Spec{ID: echoID, Routes: map[string]string{"web": live.URL("http")}})
	// s2's UDP socket is ours to close: its sidecar then falls silent
	// at once, without a CONNECTION_CLOSE, as after kill -9.
	// The TCP transport's port comes with it: a UDP port from the
	// ephemeral range can be some client connection's TCP port at that
	// moment (a make test run failed on it: "address already in use").
	sock, tcp := fixedMeshPort(t)
	m.Start("s2", meshtest.Spec{ID: echoID, PacketConn: sock, TCPListener: tcp, Routes: map[string]string{"web": doomed.URL("http")}})
	var logs testkit.LogBuffer
	// No response-header timeout: at load 40 on 2 cores (-race) queueing
	// alone took some requests past its 30 s default; what this test
	// asks is that none is lost, however long the machine makes it take.
	client := m.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{{Service: "web"}}, ClientsSpeakFirst: true,
		Logger:     logs.Logger(slog.LevelWarn),
		Resilience: outbound.Resilience{Default: outbound.ServicePolicy{ResponseHeaderTimeout: -1}}})
	url := "http://" + client.Bind("web") + "/"

	l := startLoad(t, testkit.H1Client(t), url, 500)
	testkit.Eventually(t, "both endpoints serving", func() bool { return live.Hits.Load() > 20 && doomed.Hits.Load() > 20 })
	l.countFrom()
	// A starved machine can make a live endpoint look dead before the
	// kill: count only the ejections after it.
	before := testkit.MetricSum(t, client.Metrics, "quicmesh_endpoint_ejections_total")
	sock.Close()
	killed := time.Now()
	t.Logf("endpoint killed at %s", killed.Format("15:04:05.000"))
	testkit.Eventually(t, "the dead endpoint ejected", func() bool {
		return testkit.MetricSum(t, client.Metrics, "quicmesh_endpoint_ejections_total") > before
	})
	ejected := time.Since(killed)
	// Keep the load on past the first ejection period, so that probes of
	// the dead endpoint happen under load too.
	after := l.done.Load()
	testkit.Eventually(t, "traffic after the ejection", func() bool { return l.done.Load() > after+500 })
	l.wait()

	t.Logf("%d requests, %d failed, slowest %v; endpoint ejected %v after it died (idle timeout %v); retries: %v unprocessed, %v conn_dead; ejections: %v",
		l.done.Load(), l.failed.Load(), time.Duration(l.maxLatency.Load()).Round(time.Millisecond), ejected.Round(time.Millisecond), client.Limits().IdleTimeout,
		testkit.MetricSum(t, client.Metrics, "quicmesh_retries_total", "reason", "unprocessed"), testkit.MetricSum(t, client.Metrics, "quicmesh_retries_total", "reason", "conn_dead"),
		testkit.MetricSum(t, client.Metrics, "quicmesh_endpoint_ejections_total"))
	t.Logf("client sidecar warnings:\n%s", logs.String())
	if n := l.failed.Load(); n > 0 {
		t.Fatalf("%d of %d GETs failed; first: %s", n, l.done.Load(), strings.Join(l.failures, "; "))
	}
}

// With its only endpoint answering 503 and retries on 503 configured, the
// load reaching the app stays within the retry budget: the offered
// requests, plus Ratio of them, plus MinPerSecond for the time it took
// and the allowance the budget starts with.
func TestRetryBudgetBoundsLoad(t *testing.T) {
	m := meshtest.New(t)
	app := m.HTTPApp("web", meshtest.H1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	m.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"web": app.URL("http")}})
	budget := outbound.RetryBudget{Ratio: 0.2, MinPerSecond: 1}
	client := m.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{{Service: "web"}}, ClientsSpeakFirst: true,
		Resilience: outbound.Resilience{Services: map[string]outbound.ServicePolicy{"web": {RetryOn: []int{503}, RetryBudget: budget}}}})
	url := "http://" + client.Bind("web") + "/"
	c := testkit.H1Client(t)

	const offered = 400
	start := time.Now()
	var wg sync.WaitGroup
	var not503 atomic.Int64
	work := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for range work {
				if code, err := httpStatus(c, url); err != nil || code != http.StatusServiceUnavailable {
					not503.Add(1)
				}
			}
		})
	}
	for range offered {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)

	hits := float64(app.Hits.Load())
	// The budget starts with 10 s worth of MinPerSecond (at least 10).
	bound := offered*(1+budget.Ratio) + budget.MinPerSecond*elapsed.Seconds() + max(10*budget.MinPerSecond, 10) + 1
	t.Logf("%d requests offered in %v reached the app %v times (bound %.0f); budget exhausted %v times",
		offered, elapsed.Round(time.Millisecond), hits, bound, testkit.MetricSum(t, client.Metrics, "quicmesh_retry_budget_exhausted_total"))
	if not503.Load() > 0 {
		t.Fatalf("%d requests did not get the app's 503", not503.Load())
	}
	if hits <= offered {
		t.Fatalf("the app saw %v requests for %d offered: no retry at all", hits, offered)
	}
	if hits > bound {
		t.Fatalf("the app saw %v requests for %d offered: more than the budget allows (%.0f)", hits, offered, bound)
	}
	if n := testkit.MetricSum(t, client.Metrics, "quicmesh_retries_total", "reason", "status"); n != hits-offered {
		t.Fatalf("retries_total{reason=status} = %v, want %v (the app's extra requests)", n, hits-offered)
	}
	if testkit.MetricSum(t, client.Metrics, "quicmesh_retry_budget_exhausted_total") == 0 {
		t.Fatal("the budget was never exhausted")
	}
}

// A gRPC app that answers every other call UNAVAILABLE (a Trailers-Only
// response: the app's client has seen nothing of it) is retried by the
// sidecar for a method marked retryable with UNAVAILABLE in
// retry_on_grpc, so every call succeeds; without retry_on_grpc half fail,
// and an unmarked method is never resent.
func TestGRPCStatusRetries(t *testing.T) {
	m := meshtest.New(t)
	var calls atomic.Int64
	flaky := m.GRPCApp("grpc", grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if calls.Add(1)%2 == 1 {
			return nil, status.Error(codes.Unavailable, "flaky: try again")
		}
		return h(ctx, req)
	}))
	m.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"retried": flaky.URL(""), "plain": flaky.URL(""), "other": flaky.URL("")}})
	client := m.Start("client", meshtest.Spec{ID: clientID, ClientsSpeakFirst: true,
		Binds: []meshtest.Bind{{Service: "retried"}, {Service: "plain"}, {Service: "other"}},
		Resilience: outbound.Resilience{Services: map[string]outbound.ServicePolicy{
			"retried": {RetryGRPCMethods: []string{"/" + echo.ServiceName + "/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
			"plain":   {RetryGRPCMethods: []string{"/" + echo.ServiceName + "/*"}},
			"other":   {RetryGRPCMethods: []string{"/other.Service/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
		}}})
	const n = 40
	run := func(svc string) (failed int, hits int64) {
		cc := testkit.GRPCConn(t, client.Bind(svc))
		before := flaky.Hits.Load()
		for i := range n {
			got, err := echo.EchoUnary(testkit.HangCtx(t), cc, fmt.Appendf(nil, "call %d", i))
			switch {
			case status.Code(err) == codes.Unavailable:
				failed++
			case err != nil:
				t.Fatalf("%s: call %d: %v", svc, i, err)
			case string(got) != fmt.Sprintf("call %d", i):
				t.Fatalf("%s: call %d echoed %q", svc, i, got)
			}
		}
		return failed, flaky.Hits.Load() - before
	}
	if failed, hits := run("retried"); failed != 0 || hits != 2*n {
		t.Fatalf("retry_on_grpc UNAVAILABLE: %d of %d calls failed, the app saw %d; want none failed, each failing call sent twice (%d)", failed, n, hits, 2*n)
	}
	if got := testkit.MetricSum(t, client.Metrics, "quicmesh_retries_total", "reason", "status"); got != n {
		t.Fatalf("retries_total{reason=status} = %v, want %d", got, n)
	}
	for _, svc := range []string{"plain", "other"} {
		if failed, hits := run(svc); failed != n/2 || hits != n {
			t.Fatalf("%s: %d of %d calls failed, the app saw %d; want every other call to fail, none resent", svc, failed, n, hits)
		}
	}
}

// A request that outlives its service's timeout gets a 504 naming it; a
// service's requests beyond max_pending get a 503 naming that, at once.
func TestServiceTimeoutAndBreaker(t *testing.T) {
	m := meshtest.New(t)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	held := make(chan struct{}, 16)
	app := m.HTTPApp("web", meshtest.H1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hold":
			held <- struct{}{}
			fallthrough
		case "/sleep":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	}))
	m.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"slow": app.URL("http"), "narrow": app.URL("http")}})
	client := m.Start("client", meshtest.Spec{ID: clientID, ClientsSpeakFirst: true,
		Binds: []meshtest.Bind{{Service: "slow"}, {Service: "narrow"}},
		Resilience: outbound.Resilience{Services: map[string]outbound.ServicePolicy{
			"slow":   {Timeout: 3 * time.Second},
			"narrow": {MaxPending: 1},
		}}})
	c := testkit.H1Client(t)

	resp, err := c.Get("http://" + client.Bind("slow") + "/sleep")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(resp.Header.Get(httpx.HeaderProxyError), "(timeout)") {
		t.Fatalf("slow: %d %q, want 504 naming the timeout", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
	}
	if code, err := httpStatus(c, "http://"+client.Bind("slow")+"/"); err != nil || code != http.StatusOK {
		t.Fatalf("slow, a quick request: %d, %v", code, err)
	}

	narrow := "http://" + client.Bind("narrow")
	first := make(chan int, 1)
	go func() {
		code, _ := httpStatus(c, narrow+"/hold")
		first <- code
	}()
	<-held
	resp, err = c.Get(narrow + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(resp.Header.Get(httpx.HeaderProxyError), "max_pending") {
		t.Fatalf("narrow, second request: %d %q, want 503 naming max_pending", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
	}
	if n := testkit.MetricSum(t, client.Metrics, "quicmesh_load_shed_total", "reason", "max_pending"); n != 1 {
		t.Fatalf("load_shed_total{reason=max_pending} = %v, want 1", n)
	}
	once.Do(func() { close(release) })
	if code := <-first; code != http.StatusOK {
		t.Fatalf("narrow, the pending request: %d", code)
	}
	// The pending request counts until its handler returns, which can be
	// just after its client read the response.
	testkit.Eventually(t, "narrow admitting again after the pending request", func() bool {
		code, err := httpStatus(c, narrow+"/")
		return err == nil && code == http.StatusOK
	})
}
