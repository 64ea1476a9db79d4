package gateway_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

// West's two gateways share one address (as with VRRP, or an anycast or
// ECMP route): east's route to it goes through gateway A, which is
// killed under load; the route is moved to gateway B, which has never
// seen east's connection. B knows the routing prefix of west's sidecar's
// connection IDs (it probed it), so it takes the connection over when its
// packets arrive; west's sidecar validates the new path (its peer's
// address changed, as after a NAT rebinding). The QUIC connection, and
// every tunnel in it, survives; no GET fails.
func TestNetnsGatewayTakeoverKeepsTunnels(t *testing.T) {
	testkit.NeedNetns(t, netlab.Available)
	m := meshtest.NewOver(t, fallback.QUIC)
	lab := newLab(t, "gwto")
	eastA, err := lab.Pair("east", "gwa", "10.79.1.0/24")
	if err != nil {
		t.Fatal(err)
	}
	eastB, err := lab.Pair("east", "gwb", "10.79.3.0/24")
	if err != nil {
		t.Fatal(err)
	}
	westA, err := lab.Pair("gwa", "west", "10.79.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	westB, err := lab.Pair("gwb", "west", "10.79.4.0/24")
	if err != nil {
		t.Fatal(err)
	}
	ip := func(ns string, args ...string) {
		t.Helper()
		if out, err := lab.Command(ns, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in %s: %v: %s", args, ns, err, out)
		}
	}
	// B's sockets reach west's pod address over B's own link to west.
	ip(westB.NSA, "route", "add", westA.Prefix.String(), "via", westB.AddrB.String())
	// The shared address, on both gateways; east routes it via A.
	vip := netip.MustParseAddr("10.79.9.1")
	ip(eastA.NSB, "addr", "add", vip.String()+"/32", "dev", "lo")
	ip(eastB.NSB, "addr", "add", vip.String()+"/32", "dev", "lo")
	ip(eastA.NSA, "route", "add", vip.String()+"/32", "via", eastA.AddrB.String())

	web := m.HTTPApp("web", meshtest.H1, nil)
	tcpApp := m.TCPApp("tcp", nil)
	westAddr := netip.AddrPortFrom(westA.AddrB, 4143)
	west := m.Start("west", meshtest.Spec{ID: westID, PacketConn: netnsUDP(t, lab, westA.NSB, netip.AddrPortFrom(netip.IPv4Unspecified(), westAddr.Port())),
		AppConnectTimeout: time.Until(testkit.HangGuard(t)),
		Routes:            map[string]string{"web": web.URL("http"), "tcp": tcpApp.URL("tcp")}})
	westEP := west.Endpoint()
	westEP.Addr = westAddr.String()
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westEP}, "tcp": {westEP}})
	t.Cleanup(func() { westRes.Close() })
	router := export(t, westRes, "web", "tcp")

	gw := netip.AddrPortFrom(vip, 4443)
	relayA, regA := startNetnsRelay(t, lab, eastA.NSB, westA.NSA, gw, router)
	relayB, regB := startNetnsRelay(t, lab, eastB.NSB, westB.NSA, gw, router)

	for _, svc := range []string{"web", "tcp"} {
		m.Resolve(svc, gateway.Imports(westEndpoints(westRes, svc), gw.String())...)
	}
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true,
		PacketConn: netnsUDP(t, lab, eastA.NSA, netip.AddrPortFrom(netip.IPv4Unspecified(), 0)),
		Binds:      []meshtest.Bind{{Service: "web"}, {Service: "tcp", Opaque: true}}})
	limits := transport.Limits{}.WithDefaults()

	load := testkit.StartRateLoad(t, "http://"+east.Bind("web")+"/", 500, 200)
	testkit.Eventually(t, "east's connection relayed by A", func() bool {
		return testkit.MetricSum(t, regA, "quicmesh_gateway_flows", "state", "relayed") == 1
	})
	testkit.Eventually(t, "B knows west's prefix (probe)", func() bool { return relayB.Routes() >= 1 })
	// Tunnels are opened once the connections exist, so that a dial
	// starved past its timeout on a loaded machine is not mistaken for
	// what this test is about.
	tunnels := make([]*tunnel, 20)
	for i := range tunnels {
		tunnels[i] = openTunnel(t, east.Bind("tcp"), 100*time.Millisecond)
	}
	testkit.Eventually(t, "requests served", func() bool { return load.Served() >= 100 })
	for _, tn := range tunnels {
		testkit.Eventually(t, "tunnel echoes", func() bool {
			if tn.ended() {
				t.Fatalf("a tunnel failed before any gateway was killed: %v", tn.err)
			}
			return tn.echoes.Load() >= 2
		})
	}
	if got := testkit.MetricSum(t, regB, "quicmesh_gateway_flows_routed_total"); got != 0 {
		t.Fatalf("B routed %v flows before the failover; want none (east's route goes through A)", got)
	}

	killed := time.Now()
	relayA.Close()
	ip(eastA.NSA, "route", "replace", vip.String()+"/32", "via", eastB.AddrB.String())

	testkit.Eventually(t, "every tunnel echoing through B", func() bool {
		for _, tn := range tunnels {
			if tn.ended() || !tn.lastEcho().After(killed) {
				return false
			}
		}
		return true
	})
	// Requests keep going for as long as a dead connection would take to
	// be noticed and replaced, so a takeover that silently failed would
	// show as failed or slow requests, not go unseen.
	time.Sleep(limits.LivenessTimeout + limits.DialTimeout)
	outcomes := load.Finish()
	var gap time.Duration
	alive := 0
	for _, tn := range tunnels {
		tn.close()
		gap = max(gap, tn.maxGap())
		if tn.err == nil {
			alive++
		}
	}
	var failed []string
	var slowest time.Duration
	for _, o := range outcomes {
		if o.Err != "" {
			failed = append(failed, fmt.Sprintf("%v after the kill: %s", o.Start.Sub(killed).Round(time.Millisecond), o.Err))
		}
		if o.Start.Add(o.Took).After(killed) {
			slowest = max(slowest, o.Took)
		}
	}
	t.Logf("gateway A killed, route moved to B: %d GETs, %d failed, slowest ending after the kill %v; tunnels %d of %d survived, longest pause between echoes %v (one every 100 ms)",
		len(outcomes), len(failed), slowest.Round(time.Millisecond), alive, len(tunnels), gap.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Fatalf("%d of %d GETs failed, first: %s", len(failed), len(outcomes), failed[0])
	}
	for i, tn := range tunnels {
		if tn.err != nil {
			t.Errorf("tunnel %d failed %v after the kill: %v", i, tn.failedAt.Sub(killed), tn.err)
		}
	}
	if got := testkit.MetricSum(t, regB, "quicmesh_gateway_takeovers_total"); got != 1 {
		t.Errorf("quicmesh_gateway_takeovers_total on B = %v, want 1 (east's one connection)", got)
	}
	if got := testkit.MetricSum(t, regB, "quicmesh_gateway_flows_routed_total"); got != 1 {
		t.Errorf("B routed %v flows; want only the taken-over one (no new handshake)", got)
	}
}
