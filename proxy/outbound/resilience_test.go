package outbound

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// attempt is what the scripted next stage does on one call: fail with
// err, or answer status.
type attempt struct {
	err    error
	status int
	// grpcHeader: a gRPC status in the response header (Trailers-Only);
	// grpcTrailer: one in the trailers, after the body.
	grpcHeader, grpcTrailer string
}

// scripted is a next stage that plays attempts in order (the last one
// again when they run out) and records what each call was sent.
type scripted struct {
	peer     PeerConn
	attempts []attempt
	mu       sync.Mutex
	bodies   []string
	avoids   [][]string
}

func (s *scripted) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	s.mu.Lock()
	n := len(s.bodies)
	var body string
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		body = string(b)
	}
	s.bodies = append(s.bodies, body)
	s.avoids = append(s.avoids, slices.Clone(t.avoid))
	s.mu.Unlock()
	a := s.attempts[min(n, len(s.attempts)-1)]
	key := "ep" + string(rune('0'+n))
	if a.err != nil {
		return outcome{peer: s.peer, key: key, err: a.err}
	}
	w.Header().Set("Attempt", key)
	w.Header().Set("Trailer", "X-T")
	if a.grpcHeader != "" {
		w.Header().Set("Grpc-Status", a.grpcHeader)
	}
	w.WriteHeader(a.status)
	io.WriteString(w, key)
	w.Header().Set(http.TrailerPrefix+"X-T", key)
	if a.grpcTrailer != "" {
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", a.grpcTrailer)
	}
	return outcome{peer: s.peer, key: key, res: bridge.Result{Status: a.status}}
}

func TestRetries(t *testing.T) {
	peer := &fakeConn{addr: "p:1", peer: identity.MustParseID("spiffe://test/p")}
	notProcessed := &forwardError{peer, meshcode.Mark(errors.New("stateless reset"), meshcode.ErrNotProcessed)}
	dead := &forwardError{peer, meshcode.Mark(errors.New("idle timeout"), meshcode.ErrConnDead)}
	other := &forwardError{peer, errors.New("reset by app")}
	connectFailed := &connectError{meshcode.Mark(errors.New("refused"), meshcode.ErrNotProcessed), bridge.BadGateway}
	ok := attempt{status: 200}
	unavailable := attempt{status: 503}
	grpcReq := func(path, body string) func() *http.Request {
		return func() *http.Request {
			r := httptest.NewRequest("POST", path, strings.NewReader(body))
			r.ContentLength = -1
			r.Header.Set("Content-Type", "application/grpc")
			return r
		}
	}
	get := func() *http.Request { return httptest.NewRequest("GET", "/", nil) }
	put := func(body string) func() *http.Request {
		return func() *http.Request { return httptest.NewRequest("PUT", "/", strings.NewReader(body)) }
	}
	post := func(body string) func() *http.Request {
		return func() *http.Request { return httptest.NewRequest("POST", "/", strings.NewReader(body)) }
	}
	tests := []struct {
		name      string
		policy    ServicePolicy
		req       func() *http.Request
		cancelled bool
		attempts  []attempt
		calls     int
		status    int    // the app's status; 0: the outcome is an error
		grpc      string // the app's Grpc-Status header ("" none: a held attempt's must not leak)
		reasons   string // retries by reason, "reason=n,..."
		exhausted int    // budget exhausted
	}{
		{name: "served", req: get, attempts: []attempt{ok}, calls: 1, status: 200},
		{name: "not processed: elsewhere", req: get, attempts: []attempt{{err: notProcessed}, ok}, calls: 2, status: 200, reasons: "unprocessed=1"},
		{name: "not processed, bodyless POST", req: post(""), attempts: []attempt{{err: notProcessed}, ok}, calls: 2, status: 200, reasons: "unprocessed=1"},
		{name: "not processed, POST with a body", req: post("x"), attempts: []attempt{{err: notProcessed}, ok}, calls: 1},
		{name: "not processed, client gone", req: get, cancelled: true, attempts: []attempt{{err: notProcessed}, ok}, calls: 1},
		{name: "not processed, at most MaxRetries", req: get, attempts: []attempt{{err: notProcessed}}, calls: 3, reasons: "unprocessed=2"},
		{name: "no retries configured", req: get, policy: ServicePolicy{MaxRetries: -1}, attempts: []attempt{{err: notProcessed}, ok}, calls: 1},
		{name: "dead connection, GET", req: get, attempts: []attempt{{err: dead}, ok}, calls: 2, status: 200, reasons: "conn_dead=1"},
		{name: "dead connection, bodyless POST", req: post(""), attempts: []attempt{{err: dead}, ok}, calls: 1},
		{name: "processed", req: get, attempts: []attempt{{err: other}, ok}, calls: 1},
		{name: "no connection (the connector tried the others)", req: get, attempts: []attempt{{err: connectFailed}, ok}, calls: 1},
		{name: "PUT body replayed", req: put("payload"), attempts: []attempt{{err: dead}, ok}, calls: 2, status: 200, reasons: "conn_dead=1"},
		{name: "PUT body above the limit streams, unretried", req: put("payload"), policy: ServicePolicy{RetryBodyBytes: 3},
			attempts: []attempt{{err: dead}, ok}, calls: 1},
		{name: "retryable gRPC method", req: grpcReq("/pkg.Svc/Get", "msg"), policy: ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}},
			attempts: []attempt{{err: dead}, ok}, calls: 2, status: 200, reasons: "conn_dead=1"},
		{name: "other gRPC method", req: grpcReq("/pkg.Other/Get", "msg"), policy: ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/Get"}},
			attempts: []attempt{{err: dead}, ok}, calls: 1},
		{name: "503 not configured", req: get, attempts: []attempt{unavailable, ok}, calls: 1, status: 503},
		{name: "503 configured", req: get, policy: ServicePolicy{RetryOn: []int{503}}, attempts: []attempt{unavailable, ok}, calls: 2, status: 200, reasons: "status=1"},
		{name: "503 every time: the last one is answered", req: get, policy: ServicePolicy{RetryOn: []int{503}}, attempts: []attempt{unavailable}, calls: 3, status: 503, reasons: "status=2"},
		{name: "503 to a POST", req: post(""), policy: ServicePolicy{RetryOn: []int{503}}, attempts: []attempt{unavailable, ok}, calls: 1, status: 503},
		{name: "gRPC UNAVAILABLE, Trailers-Only", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"unavailable"}},
			attempts: []attempt{{status: 200, grpcHeader: "14"}, ok}, calls: 2, status: 200, reasons: "status=1"},
		{name: "gRPC code by number", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/Get"}, RetryOnGRPC: []string{"14"}},
			attempts: []attempt{{status: 200, grpcHeader: "14"}, ok}, calls: 2, status: 200, reasons: "status=1"},
		{name: "gRPC UNAVAILABLE every time: the last one is answered", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
			attempts: []attempt{{status: 200, grpcHeader: "14"}}, calls: 3, status: 200, grpc: "14", reasons: "status=2"},
		{name: "gRPC status after messages is passed on", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
			attempts: []attempt{{status: 200, grpcTrailer: "14"}, ok}, calls: 1, status: 200},
		{name: "gRPC code not configured", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
			attempts: []attempt{{status: 200, grpcHeader: "13"}, ok}, calls: 1, status: 200, grpc: "13"},
		{name: "gRPC method not retryable", req: grpcReq("/pkg.Other/Get", "msg"),
			policy:   ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}},
			attempts: []attempt{{status: 200, grpcHeader: "14"}, ok}, calls: 1, status: 200, grpc: "14"},
		{name: "gRPC UNAVAILABLE, budget spent", req: grpcReq("/pkg.Svc/Get", "msg"),
			policy: ServicePolicy{RetryGRPCMethods: []string{"/pkg.Svc/*"}, RetryOnGRPC: []string{"UNAVAILABLE"},
				RetryBudget: RetryBudget{Ratio: -1, MinPerSecond: -1}},
			attempts: []attempt{{status: 200, grpcHeader: "14"}, ok}, calls: 1, status: 200, grpc: "14", exhausted: 1},
		{name: "503, budget spent", req: get, policy: ServicePolicy{RetryOn: []int{503}, RetryBudget: RetryBudget{Ratio: -1, MinPerSecond: -1}},
			attempts: []attempt{unavailable, ok}, calls: 1, status: 503, exhausted: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			metrics := telemetry.New(reg)
			pol := newPolicies(Resilience{Default: tt.policy}, time.Now)
			if tt.exhausted > 0 {
				// Spend the initial allowance.
				for pol.get("web").budget.withdraw() {
				}
			}
			next := &scripted{peer: peer, attempts: tt.attempts}
			rt := retries{log: slog.New(slog.DiscardHandler), metrics: metrics, next: next}
			r := tt.req()
			sent := ""
			if r.Body != nil {
				b, _ := io.ReadAll(r.Body)
				sent = string(b)
				r.Body = io.NopCloser(strings.NewReader(sent))
			}
			if tt.cancelled {
				ctx, cancel := context.WithCancel(r.Context())
				cancel()
				r = r.WithContext(ctx)
			}
			rec := httptest.NewRecorder()
			o := rt.serve(rec, r, target{service: "web", authority: "web", policy: pol.get("web")})
			if len(next.bodies) != tt.calls {
				t.Fatalf("sent %d times, want %d", len(next.bodies), tt.calls)
			}
			for i, b := range next.bodies {
				if b != sent {
					t.Errorf("attempt %d sent body %q, want %q", i, b, sent)
				}
				// Each retry avoids the endpoints tried before it.
				if want := []string{"ep0", "ep1", "ep2"}[:i]; !slices.Equal(next.avoids[i], want) {
					t.Errorf("attempt %d avoided %q, want %q", i, next.avoids[i], want)
				}
			}
			if tt.status == 0 {
				if o.err == nil {
					t.Fatalf("outcome %+v, want the last attempt's error", o)
				}
			} else {
				last := "ep" + string(rune('0'+tt.calls-1))
				if o.err != nil || rec.Code != tt.status || rec.Body.String() != last || rec.Header().Get("Attempt") != last || rec.Header().Get(http.TrailerPrefix+"X-T") != last {
					t.Fatalf("app got %d %q (header %v), error %v; want %d from %s alone", rec.Code, rec.Body.String(), rec.Header(), o.err, tt.status, last)
				}
				if got := rec.Header().Get("Grpc-Status"); got != tt.grpc {
					t.Fatalf("app got Grpc-Status %q, want %q", got, tt.grpc)
				}
			}
			if o.peer != peer {
				t.Errorf("outcome names peer %v, want the one reached", o.peer)
			}
			var got []string
			for _, reason := range []string{retryConnDead, retryStatus, retryUnprocessed} {
				if n := testkit.MetricSum(t, reg, "quicmesh_retries_total", "reason", reason); n > 0 {
					got = append(got, reason+"="+string(rune('0'+int(n))))
				}
			}
			if strings.Join(got, ",") != tt.reasons {
				t.Errorf("retries %q, want %q", strings.Join(got, ","), tt.reasons)
			}
			if n := testkit.MetricSum(t, reg, "quicmesh_retry_budget_exhausted_total"); int(n) != tt.exhausted {
				t.Errorf("budget exhausted %v times, want %d", n, tt.exhausted)
			}
		})
	}
}

func TestRetryBudget(t *testing.T) {
	tests := []struct {
		name     string
		budget   RetryBudget
		requests int           // deposited first
		elapsed  time.Duration // then the clock moves
		allowed  int           // withdrawals that succeed after the initial allowance is spent
	}{
		{"ratio only", RetryBudget{Ratio: 0.25, MinPerSecond: -1}, 32, 0, 8},
		{"ratio, capped", RetryBudget{Ratio: 0.5, MinPerSecond: 1}, 100, 0, 10},
		{"per second", RetryBudget{Ratio: -1, MinPerSecond: 4}, 0, 2 * time.Second, 8},
		{"both", RetryBudget{Ratio: 0.25, MinPerSecond: 2}, 20, 2 * time.Second, 9},
		{"per second, capped at 10 s worth", RetryBudget{Ratio: -1, MinPerSecond: 1}, 0, time.Minute, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			b := newRetryBudget(ServicePolicy{RetryBudget: tt.budget}.effective().RetryBudget, func() time.Time { return now })
			for b.withdraw() {
			}
			for range tt.requests {
				b.deposit()
			}
			now = now.Add(tt.elapsed)
			n := 0
			for b.withdraw() {
				n++
			}
			if n != tt.allowed {
				t.Fatalf("%d retries allowed, want %d", n, tt.allowed)
			}
		})
	}
}

// The breaker answers 503 beyond MaxPending at once, with the reason in
// the proxy error, and admits again once a request finishes.
func TestBreaker(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := telemetry.New(reg)
	pol := newPolicies(Resilience{Services: map[string]ServicePolicy{"web": {MaxPending: 2}}}, time.Now)
	release := make(chan struct{})
	entered := make(chan struct{}, 3)
	chain := errorResponses{bound: "web", who: "outbound test", failures: testFailures(new(testkit.LogBuffer)),
		next: breaker{pol, metrics, stageFunc(func(w http.ResponseWriter, r *http.Request, t target) outcome {
			if t.policy != pol.get(t.service) {
				panic("breaker did not pass the policy on")
			}
			entered <- struct{}{}
			<-release
			w.WriteHeader(200)
			return outcome{res: bridge.Result{Status: 200}}
		})}}
	serve := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		chain.serve(rec, httptest.NewRequest("GET", "/", nil), target{service: "web", authority: "web"})
		return rec
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { serve() })
		<-entered
	}
	rec := serve()
	if rec.Code != 503 || !strings.Contains(rec.Header().Get(httpx.HeaderProxyError), "max_pending") {
		t.Fatalf("third request: %d %q, want 503 naming max_pending", rec.Code, rec.Header().Get(httpx.HeaderProxyError))
	}
	if n := testkit.MetricSum(t, reg, "quicmesh_load_shed_total", "reason", "max_pending"); n != 1 {
		t.Fatalf("load_shed_total{reason=max_pending} = %v, want 1", n)
	}
	release <- struct{}{}
	release <- struct{}{}
	wg.Wait()
	close(release)
	if rec := serve(); rec.Code != 200 {
		t.Fatalf("after the pending requests finished: %d, want 200", rec.Code)
	}
	// Another service has no limit.
	rec = httptest.NewRecorder()
	chain.serve(rec, httptest.NewRequest("GET", "/", nil), target{service: "other", authority: "other"})
	if rec.Code != 200 {
		t.Fatalf("other service: %d", rec.Code)
	}
}

// A request past its service's timeout, or without a response header in
// time, gets 504 (gRPC DEADLINE_EXCEEDED) naming the timeout; a response
// whose header came in time is not cut by the header timeout.
func TestTimeouts(t *testing.T) {
	peer := &fakeConn{addr: "p:1", peer: identity.MustParseID("spiffe://test/p")}
	// waitCtx fails the request once its context ends, as a round trip
	// to a peer that does not answer does.
	waitCtx := func(w http.ResponseWriter, r *http.Request) outcome {
		<-r.Context().Done()
		return outcome{peer: peer, err: &forwardError{peer, r.Context().Err()}}
	}
	// headerThenWait answers a header at once, then streams until the
	// context ends or long after the header timeout.
	headerThenWait := func(w http.ResponseWriter, r *http.Request) outcome {
		w.WriteHeader(200)
		select {
		case <-r.Context().Done():
			return outcome{peer: peer, err: &forwardError{peer, context.Cause(r.Context())}}
		case <-time.After(1500 * time.Millisecond):
		}
		return outcome{peer: peer, res: bridge.Result{Status: 200}}
	}
	tests := []struct {
		name   string
		policy ServicePolicy
		grpc   bool
		next   func(w http.ResponseWriter, r *http.Request) outcome
		status int
		grpcSt string
		text   string
	}{
		{"request timeout", ServicePolicy{Timeout: 50 * time.Millisecond, ResponseHeaderTimeout: -1}, false, waitCtx, 504, "", "timed out after 50ms (timeout)"},
		{"header timeout", ServicePolicy{ResponseHeaderTimeout: 50 * time.Millisecond}, false, waitCtx, 504, "", "within 50ms (response_header_timeout)"},
		{"header timeout, gRPC", ServicePolicy{ResponseHeaderTimeout: 50 * time.Millisecond}, true, waitCtx, 200, "4", "response_header_timeout"},
		{"header in time", ServicePolicy{ResponseHeaderTimeout: time.Second}, false, headerThenWait, 200, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := newPolicies(Resilience{Default: tt.policy}, time.Now)
			chain := errorResponses{bound: "web", who: "outbound test", failures: testFailures(new(testkit.LogBuffer)),
				next: breaker{pol, nil, timeouts{stageFunc(func(w http.ResponseWriter, r *http.Request, _ target) outcome { return tt.next(w, r) })}}}
			r := httptest.NewRequest("GET", "/", nil)
			if tt.grpc {
				r.Header.Set("Content-Type", "application/grpc")
			}
			rec := httptest.NewRecorder()
			o := chain.serve(rec, r, target{service: "web", authority: "web"})
			if o.err != nil || rec.Code != tt.status || rec.Header().Get("Grpc-Status") != tt.grpcSt {
				t.Fatalf("got %d grpc-status %q (error %v), want %d %q", rec.Code, rec.Header().Get("Grpc-Status"), o.err, tt.status, tt.grpcSt)
			}
			if h := rec.Header().Get(httpx.HeaderProxyError); !strings.Contains(h, tt.text) || (tt.text == "") != (h == "") {
				t.Fatalf("%s = %q, want it to contain %q", httpx.HeaderProxyError, h, tt.text)
			}
		})
	}
}

func TestResilienceValidate(t *testing.T) {
	tests := []struct {
		name string
		res  Resilience
		err  string
	}{
		{"zero", Resilience{}, ""},
		{"good", Resilience{Default: ServicePolicy{RetryOn: []int{503, 429}, RetryGRPCMethods: []string{"/a.B/C", "/a.B/*"}}}, ""},
		{"status", Resilience{Services: map[string]ServicePolicy{"web": {RetryOn: []int{200}}}}, `service "web": retry status 200`},
		{"method", Resilience{Default: ServicePolicy{RetryGRPCMethods: []string{"a.B/C"}}}, `default policy: gRPC method "a.B/C"`},
		{"wildcard", Resilience{Default: ServicePolicy{RetryGRPCMethods: []string{"/a.B/Get*"}}}, `gRPC method "/a.B/Get*"`},
		{"gRPC codes", Resilience{Default: ServicePolicy{RetryOnGRPC: []string{"UNAVAILABLE", "resource_exhausted", "14", "16"}}}, ""},
		{"gRPC OK", Resilience{Default: ServicePolicy{RetryOnGRPC: []string{"OK"}}}, `gRPC retry status "OK"`},
		{"gRPC unknown name", Resilience{Default: ServicePolicy{RetryOnGRPC: []string{"UNAVAIL"}}}, `gRPC retry status "UNAVAIL"`},
		{"gRPC code out of range", Resilience{Default: ServicePolicy{RetryOnGRPC: []string{"17"}}}, `gRPC retry status "17"`},
		{"ratio", Resilience{Default: ServicePolicy{RetryBudget: RetryBudget{Ratio: 11}}}, "retry budget ratio 11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.res.Validate()
			if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Validate() = %v, want %q", err, tt.err)
			}
		})
	}
}

// A service entry overrides the default's fields it sets; unset ones
// inherit, then take the defaults; negative is none.
func TestPolicyMerge(t *testing.T) {
	pol := newPolicies(Resilience{
		Default:  ServicePolicy{Timeout: time.Second, RetryOn: []int{503}, MaxPending: 10},
		Services: map[string]ServicePolicy{"web": {Timeout: -1, MaxRetries: 5}},
	}, time.Now)
	web, other := pol.get("web"), pol.get("other")
	if web.Timeout != 0 || web.MaxRetries != 5 || !web.retryOn[503] || web.MaxPending != 10 || web.ResponseHeaderTimeout != DefaultResponseHeaderTimeout {
		t.Errorf("web: %+v", web.ServicePolicy)
	}
	if other.Timeout != time.Second || other.MaxRetries != DefaultMaxRetries || other.RetryBodyBytes != DefaultRetryBodyBytes || other.RetryBudget.Ratio != DefaultRetryRatio {
		t.Errorf("other: %+v", other.ServicePolicy)
	}
	if pol.get("web") != web {
		t.Error("a service's state is not kept")
	}
}

// Failure lines are limited per peer and reason: a second peer failing
// the same way gets its own line, the same peer again does not.
func TestFailureLogPerPeer(t *testing.T) {
	var logs testkit.LogBuffer
	l := testFailures(&logs)
	err := errors.New("stream reset")
	l.failed("http forward failed", "web", err, "peer", "10.0.0.1:4143")
	l.failed("http forward failed", "web", err, "peer", "10.0.0.2:4143")
	l.failed("http forward failed", "web", err, "peer", "10.0.0.1:4143")
	l.failed("http request stopped by policy", "web", &policyError{reason: "max_pending", text: "full"})
	lines := logs.Lines("http forward failed")
	if len(lines) != 2 || !strings.Contains(lines[0], "10.0.0.1") || !strings.Contains(lines[1], "10.0.0.2") {
		t.Fatalf("forward failures logged as %q, want one line per peer", lines)
	}
	if lines := logs.Lines("http request stopped by policy"); len(lines) != 1 || !strings.Contains(lines[0], "reason=max_pending") {
		t.Fatalf("policy refusal logged as %q, want reason=max_pending", lines)
	}
}

// The transport's verdict on a peer ejects the endpoint discovery named
// by the same address and identity, with the reason counted.
func TestPeerFailedEjects(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := New(Config{Discovery: &fakeDiscovery{}, Peers: &fakePeers{}, Metrics: telemetry.New(reg)})
	ep := endpointsAt("10.0.0.1:4143")[0]
	p.PeerFailed(ep.Addr, identity.MustParseID(ep.Identity), "unresponsive")
	acc, ok := p.cfg.Balancer.(*balance.Accrual)
	if !ok {
		t.Fatalf("default balancer %T, want *balance.Accrual", p.cfg.Balancer)
	}
	if !acc.Ejected(ep.Key()) {
		t.Fatal("the endpoint is not ejected")
	}
	if n := testkit.MetricSum(t, reg, "quicmesh_endpoint_ejections_total", "reason", "unresponsive"); n != 1 {
		t.Fatalf("ejections{reason=unresponsive} = %v, want 1", n)
	}
}
