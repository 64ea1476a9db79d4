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
	"github.com/quicmesh/quicmesh/transport"
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
// (testkit.SchedWatch: one long wait, or waits adding up to more than
// the switch's excess over the bound) is measured again, until the hang
// guard, as it says nothing of quicmesh (at load 40 one run took 4
// attempts).
func TestFederatedFailoverWithinBound(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	// The sidecars' dials (of their apps, and east's of west through
	// the gateway, and its wait for a connection) wait until the hang
	// guard: at load 38-44 (-race, two CPU hogs) a loopback dial outlasted
	// the 2 s default and 20 requests got 504, a dial through the gateway
	// during which the process lost 4.2 s waiting for CPU missed the 3 s
	// handshake timeout and 110 requests got 502, and a request waited
	// past the 5 s connect timeout in a 5.1 s switch (4.7 s lost), which
	// is not what this test asks about. A slow dial still shows: the
	// switch it is part of is timed.
	appConnect := time.Until(testkit.HangGuard(t))
	dialLimits := transport.Limits{DialTimeout: appConnect, HandshakeTimeout: appConnect}
	var local []discovery.Endpoint
	for i := range 2 {
		app := m.HTTPApp(fmt.Sprintf("east-web-%d", i), meshtest.H1, servedBy("east"))
		sc := m.Start(fmt.Sprintf("east-server-%d", i), meshtest.Spec{ID: "spiffe://test.local/ns/east/sa/server", AppConnectTimeout: appConnect, Routes: map[string]string{"web": app.URL("http")}})
		local = append(local, sc.Endpoint())
	}
	remote := m.HTTPApp("west-web", meshtest.H1, servedBy("west"))
	westSrv := m.Start("west", meshtest.Spec{ID: westID, AppConnectTimeout: appConnect, Limits: dialLimits, Routes: map[string]string{"web": remote.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	gw, reg := startGateway(t, export(t, westRes, "web"))
	imported := gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)
	federated := append(append([]discovery.Endpoint(nil), local...), imported...)
	m.Resolve("web", federated...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Limits: dialLimits, ConnectTimeout: appConnect, Binds: []meshtest.Bind{{Service: "web"}}})
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
	guard := testkit.HangGuard(t)
	attempt := 0
	for !passed && time.Now().Before(guard) {
		attempt++
		sw.Starved(0)
		away, done := switchTo("west", imported)
		awayLost, awayStarved := sw.Lost(), sw.Starved(federatedSwitchBound/4)
		settle("west", done)
		sw.Starved(0)
		back, done := switchTo("east", federated)
		backLost, backStarved := sw.Lost(), sw.Starved(federatedSwitchBound/4)
		settle("east", done)
		ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
		t.Logf("attempt %d: to west through the gateway in %s (%s lost waiting for CPU), back in %s (%s lost)", attempt, ms(away), ms(awayLost), ms(back), ms(backLost))
		// A slow switch says nothing of quicmesh when the process was
		// starved in one long wait, or when it lost waiting for CPU at
		// least the time the switch took beyond the bound (at load 30 a
		// switch took 1.16 s with no wait of 250 ms: a handshake through
		// the gateway hands off between goroutines dozens of times).
		excused := func(took, lost time.Duration, starved bool) bool {
			return took <= federatedSwitchBound || starved || took-lost <= federatedSwitchBound
		}
		switch {
		case away <= federatedSwitchBound && back <= federatedSwitchBound:
			passed = true
		case !excused(away, awayLost, awayStarved) || !excused(back, backLost, backStarved):
			t.Fatalf("switch to west %s (%s lost waiting for CPU), back %s (%s lost): want each within %s (the process was not starved)",
				away, awayLost, back, backLost, federatedSwitchBound)
		}
	}
	if !passed {
		t.Fatalf("%d attempts until the hang guard, each slower than %s while the process was starved of CPU", attempt, federatedSwitchBound)
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
