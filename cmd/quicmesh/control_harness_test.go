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

// meshFixture is a control plane (the test's reviewer and services) and
// the sidecars and apps a test starts against it, all on loopback.
type meshFixture struct {
	t      *testing.T
	dir    string
	caFile string
	rev    *reviewer
	src    *services
	cp     *restartableControl
}

const (
	fixtureTD = "cluster.test"
	echoID    = "spiffe://" + fixtureTD + "/ns/ns/sa/echo"
)

// newMeshFixture starts the control plane issuing certificates for
// lifetime; tokens "web-token" and "echo-token" are ns/web and ns/echo.
func newMeshFixture(t *testing.T, lifetime time.Duration) *meshFixture {
	t.Helper()
	before := testkit.TakeBaseline()
	t.Cleanup(func() { before.Check(t) })
	f := &meshFixture{t: t, dir: t.TempDir(), src: newServices(),
		rev: newReviewer(map[string]control.ServiceAccount{"web-token": {Namespace: "ns", Name: "web"}, "echo-token": {Namespace: "ns", Name: "echo"}})}
	ca, err := identity.NewCA(fixtureTD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(filepath.Join(f.dir, "ca")); err != nil {
		t.Fatal(err)
	}
	f.caFile = filepath.Join(f.dir, "ca", identity.CACertFile)
	f.cp = &restartableControl{t: t, cfg: control.Config{CA: ca, ID: identity.MustParseID("spiffe://" + fixtureTD + controlPlanePath),
		Reviewer: f.rev, Source: f.src, Lifetime: lifetime}}
	f.cp.start()
	t.Cleanup(f.cp.kill)
	return f
}

// sidecar starts `quicmesh proxy --control` with token; it is not waited
// for.
func (f *meshFixture) sidecar(name, token string, extra ...string) *proxyRun {
	f.t.Helper()
	path := filepath.Join(f.dir, token)
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return startProxyRun(f.t, name, append([]string{"--control", f.cp.addr, "--control-ca", f.caFile, "--control-token", path,
		"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, extra...)...)
}

// readySidecar is sidecar waited for until ready, stopped at the end.
func (f *meshFixture) readySidecar(name, token string, extra ...string) (*proxyRun, logRecord) {
	f.t.Helper()
	p := f.sidecar(name, token, extra...)
	rec := p.waitLog(f.t, "ready")
	f.t.Cleanup(func() { p.stop(f.t, rec.Admin) })
	return p, rec
}

// backend starts an app answering its name and returns its address.
func (f *meshFixture) backend(name string) string {
	app := testkit.Listen(f.t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) })}
	go srv.Serve(app)
	f.t.Cleanup(func() { srv.Close() })
	return app.Addr().String()
}

// load is workers sending sequential GET http://SERVICE/ through a
// sidecar's HTTP proxy, counting answers by backend name.
type load struct {
	mu       sync.Mutex
	counts   map[string]int
	failures []string
	stop     func()
}

func startLoad(t *testing.T, httpProxy, service string, workers int) *load {
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: httpProxy}), MaxIdleConnsPerHost: workers},
		Timeout: time.Until(testkit.HangGuard(t))}
	l := &load{counts: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := get(client, "http://"+service+"/")
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, time.Now().Format(time.TimeOnly)+" "+err.Error())
				} else {
					l.counts[got]++
				}
				l.mu.Unlock()
			}
		})
	}
	l.stop = sync.OnceFunc(func() { close(stop); wg.Wait(); client.CloseIdleConnections() })
	t.Cleanup(l.stop)
	return l
}

func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d (%s), Quicmesh-Proxy-Error %q", resp.StatusCode, b, resp.Header.Get("Quicmesh-Proxy-Error"))
	}
	return string(b), nil
}

// phase returns the counts since the last phase and starts new ones.
func (l *load) phase() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.counts
	l.counts = map[string]int{}
	return c
}

// total is the number of answers since the last phase.
func (l *load) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.counts {
		n += c
	}
	return n
}

func (l *load) seen(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[name] > 0
}

// waitRequests waits for n answers in this phase and returns the phase.
func (l *load) waitRequests(t *testing.T, n int) map[string]int {
	testkit.Eventually(t, fmt.Sprintf("%d requests", n), func() bool { return l.total() >= n })
	return l.phase()
}

// waitNone waits for a window of 100 answers in a row none of which came
// from name.
func (l *load) waitNone(t *testing.T, what, name string) {
	testkit.Eventually(t, what, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.counts[name] > 0 {
			l.counts = map[string]int{}
			return false
		}
		n := 0
		for _, c := range l.counts {
			n += c
		}
		return n >= 100
	})
}

// checkNoFailures stops the load and fails t if any request failed.
func (l *load) checkNoFailures(t *testing.T, during string) {
	t.Helper()
	l.stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) > 0 {
		t.Fatalf("%d requests failed %s; first: %s", len(l.failures), during, l.failures[0])
	}
}
