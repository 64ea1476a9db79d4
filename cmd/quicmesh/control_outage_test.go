package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// restartableControl is the control plane's gRPC server that a test can
// kill and start again on the same address, as a pod restart behind a
// Service would.
type restartableControl struct {
	t    *testing.T
	cfg  control.Config
	addr string
	mu   sync.Mutex
	stop func()
}

func (c *restartableControl) start() {
	c.t.Helper()
	srv, err := control.NewServer(c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	addr := c.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	// The old listener's port can take a moment to be free again.
	testkit.Eventually(c.t, "listening on "+addr, func() bool {
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	c.addr = lis.Addr().String()
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(lis) }()
	c.mu.Lock()
	c.stop = func() { srv.Stop(); <-served }
	c.mu.Unlock()
}

func (c *restartableControl) kill() {
	c.mu.Lock()
	stop := c.stop
	c.stop = nil
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// TestControlPlaneOutage: the control plane killed for 30 s (issue 14's
// figure) under load: no request between existing sidecars fails; a
// sidecar started meanwhile stays not ready and binds nothing; after the
// restart it is certified, and the existing sidecars' discovery
// resynchronises (a change made after the restart is used).
func TestControlPlaneOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("a 30 s outage; not in -short")
	}
	const td = "cluster.test"
	const outage = 30 * time.Second
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
	cp := &restartableControl{t: t, cfg: control.Config{CA: ca, ID: identity.MustParseID("spiffe://" + td + controlPlanePath), Reviewer: rev, Source: src, Lifetime: time.Hour}}
	cp.start()
	t.Cleanup(cp.kill)
	tokenFile := func(token string) string {
		path := filepath.Join(dir, token)
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	sidecar := func(name, token string, extra ...string) *proxyRun {
		return startProxyRun(t, name, append([]string{"--control", cp.addr, "--control-ca", caFile, "--control-token", tokenFile(token),
			"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, extra...)...)
	}
	backend := func(name string) string {
		app := testkit.Listen(t)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) })}
		go srv.Serve(app)
		t.Cleanup(func() { srv.Close() })
		return app.Addr().String()
	}
	const echoID = "spiffe://" + td + "/ns/ns/sa/echo"
	e1 := sidecar("e1", "echo-token", "--http-proxy", "", "--route", "echo.ns="+backend("e1"))
	e1Ready := e1.waitLog(t, "ready")
	t.Cleanup(func() { e1.stop(t, e1Ready.Admin) })
	src.set("echo.ns", &controlpb.Endpoint{Address: e1Ready.Inbound, Identity: echoID, Weight: 1, Ready: true})
	web := sidecar("web", "web-token", "--http-proxy", "127.0.0.1:0")
	webReady := web.waitLog(t, "ready")
	t.Cleanup(func() { web.stop(t, webReady.Admin) })

	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: webReady.HTTPProxy})}, Timeout: time.Until(testkit.HangGuard(t))}
	defer client.CloseIdleConnections()
	var (
		mu       sync.Mutex
		counts   = map[string]int{}
		failures []string
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://echo.ns/")
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d (%s), Quicmesh-Proxy-Error %q", resp.StatusCode, body, resp.Header.Get("Quicmesh-Proxy-Error"))
					}
				}
				mu.Lock()
				if err != nil {
					failures = append(failures, time.Now().Format(time.TimeOnly)+" "+err.Error())
				} else {
					counts[string(body)]++
				}
				mu.Unlock()
			}
		})
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	total := func() (n int, byName map[string]int) {
		mu.Lock()
		defer mu.Unlock()
		byName = map[string]int{}
		for k, v := range counts {
			n += v
			byName[k] = v
		}
		return n, byName
	}
	testkit.Eventually(t, "load flowing", func() bool { n, _ := total(); return n > 50 })

	cp.kill()
	killed := time.Now()
	atKill, _ := total()
	// A sidecar started while the control plane is away.
	late := sidecar("late", "echo-token", "--http-proxy", "", "--route", "echo.ns="+backend("late"))
	waiting := late.waitLog(t, "waiting for the first certificate from the control plane; not ready until then")
	time.Sleep(time.Until(killed.Add(outage)))
	if code := readyStatus(t, waiting.Admin); code != http.StatusServiceUnavailable {
		t.Errorf("the sidecar started during the outage: /ready %d, want 503", code)
	}
	for _, msg := range []string{"sidecar started", "ready"} {
		if _, ok := late.find(msg); ok {
			t.Errorf("the sidecar started during the outage logged %q:\n%s", msg, late.logs.String())
		}
	}
	during, _ := total()
	t.Logf("%d requests during the %v outage", during-atKill, outage)
	if during-atKill < 10 {
		t.Errorf("only %d requests during the outage: the load stalled", during-atKill)
	}

	cp.start()
	lateReady := late.waitLog(t, "ready")
	t.Cleanup(func() { late.stop(t, lateReady.Admin) })
	if code := readyStatus(t, lateReady.Admin); code != http.StatusOK {
		t.Errorf("the late sidecar after the restart: /ready %d, want 200", code)
	}
	// The web sidecar's discovery is live again: the late sidecar added
	// to the service gets requests.
	src.set("echo.ns",
		&controlpb.Endpoint{Address: e1Ready.Inbound, Identity: echoID, Weight: 1, Ready: true},
		&controlpb.Endpoint{Address: lateReady.Inbound, Identity: echoID, Weight: 1, Ready: true})
	testkit.Eventually(t, "requests reaching the sidecar started during the outage", func() bool { _, c := total(); return c["late"] > 0 })
	stopLoad()
	if len(failures) > 0 {
		t.Fatalf("%d requests failed (control plane killed at %s); first: %s", len(failures), killed.Format(time.TimeOnly), failures[0])
	}
}
