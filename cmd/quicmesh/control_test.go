package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// reviewer is the control plane's TokenReviewer for a cmd-level test:
// each known token is one service account. A held token's review waits
// until it is released, so a test can look at a sidecar that has asked
// for its certificate and not got it. The review against a real API
// server is tested in internal/control/kube.
type reviewer struct {
	accounts map[string]control.ServiceAccount
	mu       sync.Mutex
	held     map[string]chan struct{} // closed on release
	asked    map[string]chan struct{} // closed at the token's first review
}

func newReviewer(accounts map[string]control.ServiceAccount) *reviewer {
	r := &reviewer{accounts: accounts, held: map[string]chan struct{}{}, asked: map[string]chan struct{}{}}
	for token := range accounts {
		r.asked[token] = make(chan struct{})
	}
	return r
}

func (r *reviewer) hold(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[token] = make(chan struct{})
}

func (r *reviewer) release(token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.held[token])
}

func (r *reviewer) Review(ctx context.Context, token string) (control.ServiceAccount, error) {
	sa, ok := r.accounts[token]
	if !ok {
		return control.ServiceAccount{}, control.ErrTokenRejected
	}
	r.mu.Lock()
	select {
	case <-r.asked[token]:
	default:
		close(r.asked[token])
	}
	held := r.held[token]
	r.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return control.ServiceAccount{}, ctx.Err()
		}
	}
	return sa, nil
}

// services is the control plane's Source for a cmd-level test: services
// set by the test, the Kubernetes API standing aside (it refuses loopback
// addresses in EndpointSlices, and the sidecars here are on loopback).
type services struct {
	mu      sync.Mutex
	sets    map[string]*control.EndpointSet
	changed chan struct{} // closed at the next set
}

func newServices() *services {
	return &services{sets: map[string]*control.EndpointSet{}, changed: make(chan struct{})}
}

func (s *services) set(service string, eps ...*controlpb.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := &control.EndpointSet{Exists: true, Endpoints: map[string]*controlpb.Endpoint{}}
	for _, ep := range eps {
		set.Endpoints[control.EndpointKey(ep)] = ep
	}
	s.sets[service] = set
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *services) Subscribe(service string) control.Subscription {
	return subscription{s, service}
}

func (s *services) Catalog() (control.Catalog, <-chan struct{}) {
	return control.Catalog{}, make(chan struct{})
}

type subscription struct {
	s       *services
	service string
}

func (sub subscription) Current() (*control.EndpointSet, <-chan struct{}) {
	sub.s.mu.Lock()
	defer sub.s.mu.Unlock()
	if set, ok := sub.s.sets[sub.service]; ok {
		return set, sub.s.changed
	}
	return &control.EndpointSet{}, sub.s.changed
}

func (subscription) Close() {}

// proxyRun is `quicmesh proxy` running in process with JSON logs.
type proxyRun struct {
	name string
	logs testkit.LogBuffer
	done chan int
}

func startProxyRun(t *testing.T, name string, args ...string) *proxyRun {
	t.Helper()
	p := &proxyRun{name: name, done: make(chan int, 1)}
	go func() {
		p.done <- run(append([]string{"proxy", "--log-format", "json", "--admin-shutdown", "--grace", "2s"}, args...), io.Discard, &p.logs)
	}()
	return p
}

// logRecord is what the tests read of a log line.
type logRecord struct {
	Msg, Admin, Inbound, ID string
	HTTPProxy               string `json:"http_proxy"`
}

// find returns the first log line with message msg.
func (p *proxyRun) find(msg string) (logRecord, bool) {
	for line := range strings.SplitSeq(p.logs.String(), "\n") {
		var rec logRecord
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg {
			return rec, true
		}
	}
	return logRecord{}, false
}

// waitLog waits for a log line with message msg; the sidecar must not
// exit meanwhile.
func (p *proxyRun) waitLog(t *testing.T, msg string) logRecord {
	t.Helper()
	var rec logRecord
	testkit.Eventually(t, p.name+" to log "+msg, func() bool {
		select {
		case code := <-p.done:
			t.Fatalf("%s exited with %d before logging %q:\n%s", p.name, code, msg, p.logs.String())
		default:
		}
		var ok bool
		rec, ok = p.find(msg)
		return ok
	})
	return rec
}

// stop shuts the sidecar down through its admin server and wants exit 0.
func (p *proxyRun) stop(t *testing.T, admin string) {
	t.Helper()
	resp, err := http.Post("http://"+admin+"/shutdown", "text/plain", nil)
	if err != nil {
		t.Errorf("%s: POST /shutdown: %v", p.name, err)
		return
	}
	resp.Body.Close()
	select {
	case code := <-p.done:
		if code != 0 {
			t.Errorf("%s exited with %d:\n%s", p.name, code, p.logs.String())
		}
	case <-time.After(time.Until(testkit.HangGuard(t))):
		t.Errorf("%s did not exit after POST /shutdown", p.name)
	}
}

func readyStatus(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// startControlServer serves the control plane's gRPC services on
// loopback, as quicmesh-control does, over reviewer and src.
func startControlServer(t *testing.T, ca *identity.CA, r control.TokenReviewer, src control.Source) string {
	t.Helper()
	srv, err := control.NewServer(control.Config{CA: ca, ID: identity.MustParseID("spiffe://" + ca.TrustDomain() + controlPlanePath),
		Reviewer: r, Source: src, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	return lis.Addr().String()
}

// Two `quicmesh proxy --control` sidecars certified by the control plane:
// before its certificate a sidecar is not ready and has started nothing
// (fail closed); once certified it serves, and a request flows from one
// to the other, each end verifying the identity the control plane issued
// and the endpoint it served. The control plane is internal/control's
// server with a TokenReviewer and a Source of the test's own: the
// Kubernetes side (TokenReview, informers) is tested against a real API
// server in internal/control/kube and cmd/quicmesh-control.
func TestProxyWithControlPlane(t *testing.T) {
	const td = "cluster.test"
	// Registered first, checked last: once the sidecars have exited and
	// the control plane has stopped, nothing they started runs.
	before := testkit.TakeBaseline()
	t.Cleanup(func() { before.Check(t) })
	dir := t.TempDir()
	ca, err := identity.NewCA(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca", identity.CACertFile)
	rev := newReviewer(map[string]control.ServiceAccount{"web-token": {Namespace: "ns", Name: "web"}, "echo-token": {Namespace: "ns", Name: "echo"}})
	src := newServices()
	addr := startControlServer(t, ca, rev, src)
	tokenFile := func(token string) string {
		path := filepath.Join(dir, token)
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	app := testkit.Listen(t)
	appSrv := &http.Server{Handler: echo.Handler()}
	go appSrv.Serve(app)
	t.Cleanup(func() { appSrv.Close() })

	const webID, echoID = "spiffe://" + td + "/ns/ns/sa/web", "spiffe://" + td + "/ns/ns/sa/echo"
	sidecar := func(name, token string, extra ...string) *proxyRun {
		return startProxyRun(t, name, append([]string{"--control", addr, "--control-ca", caFile, "--control-token", tokenFile(token),
			"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, extra...)...)
	}

	// The echo sidecar's review is held: it has asked and has no
	// certificate.
	rev.hold("echo-token")
	echoSC := sidecar("echo", "echo-token", "--http-proxy", "", "--route", "echo.ns="+app.Addr().String())
	waiting := echoSC.waitLog(t, "waiting for the first certificate from the control plane; not ready until then")
	select {
	case <-rev.asked["echo-token"]:
	case <-time.After(time.Until(testkit.HangGuard(t))):
		t.Fatalf("the echo sidecar never asked for a certificate:\n%s", echoSC.logs.String())
	}
	if code := readyStatus(t, waiting.Admin); code != http.StatusServiceUnavailable {
		t.Fatalf("/ready before the certificate: %d, want 503", code)
	}
	// Nothing started: sidecar.Start logs "sidecar started" once its
	// sockets are bound.
	for _, msg := range []string{"sidecar started", "ready"} {
		if _, ok := echoSC.find(msg); ok {
			t.Fatalf("the echo sidecar logged %q before it was certified:\n%s", msg, echoSC.logs.String())
		}
	}
	rev.release("echo-token")
	echoReady := echoSC.waitLog(t, "ready")
	t.Cleanup(func() { echoSC.stop(t, echoReady.Admin) })
	if echoReady.ID != echoID {
		t.Fatalf("the echo sidecar is %q, want %q", echoReady.ID, echoID)
	}
	if code := readyStatus(t, echoReady.Admin); code != http.StatusOK {
		t.Fatalf("/ready once certified: %d, want 200", code)
	}
	src.set("echo.ns", &controlpb.Endpoint{Address: echoReady.Inbound, Identity: echoID, Weight: 1, Ready: true})

	web := sidecar("web", "web-token", "--http-proxy", "127.0.0.1:0")
	webReady := web.waitLog(t, "ready")
	t.Cleanup(func() { web.stop(t, webReady.Admin) })
	if webReady.ID != webID {
		t.Fatalf("the web sidecar is %q, want %q", webReady.ID, webID)
	}

	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: webReady.HTTPProxy})}, Timeout: time.Until(testkit.HangGuard(t))}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://echo.ns/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("GET http://echo.ns/ through the web sidecar: %d %q %v, Quicmesh-Proxy-Error %q", resp.StatusCode, body, err, resp.Header.Get("Quicmesh-Proxy-Error"))
	}
	// The echo sidecar verified the caller as the identity the control
	// plane gave the web sidecar, and told the app.
	if got := resp.Header.Get(echo.HeaderPeerIdentity); got != webID {
		t.Fatalf("the app saw the caller as %q, want %q", got, webID)
	}
}
