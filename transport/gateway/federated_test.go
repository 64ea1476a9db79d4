package gateway_test

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

// federatedSwitchBound is issue 16's bound on a federated service's
// failover: once the last local endpoint is gone, requests go to the
// other cluster through the gateway within it, and come back within it
// once a local one returns.
const federatedSwitchBound = time.Second

// servedBy marks each response with the cluster whose app answered.
func servedBy(cluster string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Served-By", cluster)
		io.WriteString(w, "ok\n")
	})
}

// outcome is one request of the steady stream.
type outcome struct {
	start, end time.Time
	cluster    string // "" when it failed
	err        string
}

// A federated service under a steady stream of GETs (4 callers, each
// sending its next request when the last is answered): east's two
// endpoints of "web" are removed from east's discovery, and the
// requests move to west's endpoint through the gateway (a new QUIC
// connection through it) within federatedSwitchBound; they come back
// within it when the local endpoints return. No request fails; no
// request started after a switch completed goes to the side it left.
// A switch slower than the bound while this process was starved of CPU
// is measured again (at most 5 times), as it says nothing of quicmesh.
func TestFederatedFailoverWithinBound(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	var local []discovery.Endpoint
	for i := range 2 {
		app := m.HTTPApp(fmt.Sprintf("east-web-%d", i), meshtest.H1, servedBy("east"))
		sc := m.Start(fmt.Sprintf("east-server-%d", i), meshtest.Spec{ID: "spiffe://test.local/ns/east/sa/server", Routes: map[string]string{"web": app.URL("http")}})
		local = append(local, sc.Endpoint())
	}
	remote := m.HTTPApp("west-web", meshtest.H1, servedBy("west"))
	westSrv := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": remote.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	gw, reg := startGateway(t, export(t, westRes, "web"))
	imported := gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)
	federated := append(append([]discovery.Endpoint(nil), local...), imported...)
	m.Resolve("web", federated...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	url := "http://" + east.Bind("web") + "/"

	var (
		mu   sync.Mutex
		outs []outcome
	)
	stop := make(chan struct{})
	var callers sync.WaitGroup
	for range 4 {
		callers.Add(1)
		go func() {
			defer callers.Done()
			c := testkit.H1Client(t)
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := outcome{start: time.Now()}
				resp, err := c.Get(url)
				switch {
				case err != nil:
					o.err = err.Error()
				case resp.StatusCode != 200:
					o.err = resp.Status + " " + resp.Header.Get(httpx.HeaderProxyError)
				default:
					o.cluster = resp.Header.Get("Served-By")
				}
				if resp != nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				o.end = time.Now()
				mu.Lock()
				outs = append(outs, o)
				mu.Unlock()
			}
		}()
	}
	stopped := false
	stopCallers := func() {
		if !stopped {
			stopped = true
			close(stop)
			callers.Wait()
		}
	}
	defer stopCallers()

	// switchTo changes east's discovery and returns how long until a
	// request started after the change was answered by cluster, and
	// when that was.
	switchTo := func(cluster string, eps []discovery.Endpoint) (took time.Duration, done time.Time) {
		t.Helper()
		changed := time.Now()
		m.Resolve("web", eps...)
		testkit.Eventually(t, "requests answered by "+cluster, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, o := range outs {
				if o.start.After(changed) && o.cluster == cluster {
					done = o.end
					return true
				}
			}
			return false
		})
		return done.Sub(changed), done
	}
	// settle lets 20 requests run after a switch completed (at done)
	// and checks that all those went to cluster.
	settle := func(cluster string, done time.Time) {
		t.Helper()
		after := func() (n int) {
			for _, o := range outs {
				if o.start.After(done) {
					n++
					if o.cluster != "" && o.cluster != cluster {
						t.Fatalf("a request started %s after the switch to %s completed was answered by %s", o.start.Sub(done), cluster, o.cluster)
					}
				}
			}
			return n
		}
		testkit.Eventually(t, "20 requests after the switch", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return after() >= 20
		})
	}

	_, done := switchTo("east", federated)
	settle("east", done)
	sw := testkit.NewSchedWatch()
	defer sw.Stop()
	passed := false
	for attempt := 1; attempt <= 5 && !passed; attempt++ {
		sw.Starved(0)
		away, done := switchTo("west", imported)
		awayStarved := sw.Starved(federatedSwitchBound / 4)
		settle("west", done)
		sw.Starved(0)
		back, done := switchTo("east", federated)
		backStarved := sw.Starved(federatedSwitchBound / 4)
		settle("east", done)
		t.Logf("attempt %d: to west through the gateway in %s, back in %s", attempt, away.Round(time.Millisecond), back.Round(time.Millisecond))
		switch {
		case away <= federatedSwitchBound && back <= federatedSwitchBound:
			passed = true
		case (away > federatedSwitchBound && !awayStarved) || (back > federatedSwitchBound && !backStarved):
			t.Fatalf("switch to west %s, back %s: want each within %s (the process was not starved)", away, back, federatedSwitchBound)
		}
	}
	if !passed {
		t.Fatalf("5 attempts, each slower than %s while the process was starved of CPU", federatedSwitchBound)
	}
	stopCallers()
	var failed []string
	for _, o := range outs {
		if o.err != "" {
			failed = append(failed, o.err)
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed across the switches, first: %s", len(failed), len(outs), failed[0])
	}
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_flows_routed_total"); got == 0 {
		t.Fatal("the gateway routed nothing: west was not reached through it")
	}
}
