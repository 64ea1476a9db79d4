package gateway_test

import (
	"io"
	"strings"
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

// A gateway that cannot route a server name (here: one that exports
// nothing, as a gateway with a stale export list) refuses the connection
// with a CONNECTION_CLOSE in an Initial. East's sidecar reads it as
// CONNECTION_REFUSED, the reason "refused" and not "timeout": it does
// not wait for its dial timeout, and with a second gateway listed it
// goes there, so no request fails.
func TestUnroutableNameIsRefusedAtOnce(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	app := m.HTTPApp("web", meshtest.H1, nil)
	west := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": app.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {west.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	good, _ := startGateway(t, export(t, westRes, "web"))
	stale, staleReg := startGateway(t, export(t, westRes)) // exports nothing

	m.Resolve("web", gateway.Imports(westEndpoints(westRes, "web"), stale)...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	c := testkit.H1Client(t)

	t.Run("only the refusing gateway", func(t *testing.T) {
		resp, err := c.Get("http://" + east.Bind("web") + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		perr := resp.Header.Get(httpx.HeaderProxyError)
		if resp.StatusCode < 500 || !strings.Contains(perr, "("+transport.ReasonRefused+")") {
			t.Fatalf("status %d, %s %q; want a 5xx for a refused dial", resp.StatusCode, httpx.HeaderProxyError, perr)
		}
		if got := testkit.MetricSum(t, staleReg, "quicmesh_gateway_refusals_total"); got == 0 {
			t.Fatal("the gateway sent no refusal")
		}
	})

	t.Run("two gateways", func(t *testing.T) {
		m.Resolve("web", append(gateway.Imports(westEndpoints(westRes, "web"), stale),
			gateway.Imports(westEndpoints(westRes, "web"), good)...)...)
		before := testkit.MetricSum(t, staleReg, "quicmesh_gateway_refusals_total")
		// The first subtest's refusals ejected the refusing gateway's
		// endpoint (failure accrual, 1 s at first), so requests go to the
		// good one until the ejection ends and one is let through as a
		// probe: wait for that event, not for a number of requests.
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; testkit.MetricSum(t, staleReg, "quicmesh_gateway_refusals_total") == before; i++ {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests in 10 s and none was sent to the refusing gateway", i)
			}
			resp, err := c.Get("http://" + east.Bind("web") + "/")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("request %d: status %d (%s); a refused dial must go to the other gateway", i, resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
			}
		}
	})
}
