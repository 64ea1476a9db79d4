package gateway_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

// Two "clusters" in network namespaces: east's pod network and west's
// are each joined to the gateway's namespace only, which does not
// forward, so east's sidecar can reach nothing of west but the gateway's
// address, over UDP. HTTP/1.1, gRPC and TCP from east reach west's apps
// through the gateway, which sees east's identity.
func TestNetnsGatewayBridgesTwoClusters(t *testing.T) {
	testkit.NeedNetns(t, netlab.Available)
	m := meshtest.NewOver(t, fallback.QUIC)
	lab := newLab(t, "gw")
	eastLink, err := lab.Pair("east", "gw", "10.77.1.0/24") // A: east's pod, B: the gateway's east side
	if err != nil {
		t.Fatal(err)
	}
	westLink, err := lab.Pair("gw", "west", "10.77.2.0/24") // A: the gateway's west side, B: west's pod
	if err != nil {
		t.Fatal(err)
	}
	udpIn := func(ns string, addr netip.AddrPort) *net.UDPConn {
		t.Helper()
		var c *net.UDPConn
		if err := lab.Do(ns, func() (err error) {
			c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	web := m.HTTPApp("web", meshtest.H1, nil)
	grpcApp := m.GRPCApp("grpc")
	tcpApp := m.TCPApp("tcp", nil)
	westAddr := netip.AddrPortFrom(westLink.AddrB, 4143)
	west := m.Start("west", meshtest.Spec{ID: westID, PacketConn: udpIn(westLink.NSB, westAddr),
		Routes: map[string]string{"web": web.URL("http"), "grpc": grpcApp.URL(""), "tcp": tcpApp.URL("tcp")}})

	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {west.Endpoint()}, "grpc": {west.Endpoint()}, "tcp": {west.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	gwAddr := netip.AddrPortFrom(eastLink.AddrB, 4443)
	reg := prometheus.NewRegistry()
	relay, err := gateway.New(gateway.Config{
		Conn:   udpIn(eastLink.NSB, gwAddr),
		Router: export(t, westRes, "web", "grpc", "tcp"),
		// The gateway's sockets towards west live in its namespace too.
		DialUpstream: func(dst netip.AddrPort) (c *net.UDPConn, err error) {
			err = lab.Do(westLink.NSA, func() error {
				c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
				return err
			})
			return c, err
		},
		Logger: testkit.DebugLogger(), Metrics: gateway.NewMetrics(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })

	// East's pod cannot reach west's pod network at all.
	if err := lab.Do(eastLink.NSA, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(westAddr))
		if err == nil {
			_, err = c.Write([]byte("x"))
			c.Close()
		}
		return err
	}); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("east's pod sending to west's pod: %v, want ENETUNREACH (the pod networks must not be routed)", err)
	}

	for _, svc := range []string{"web", "grpc", "tcp"} {
		m.Resolve(svc, gateway.Imports([]discovery.Endpoint{west.Endpoint()}, gwAddr.String())...)
	}
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true,
		PacketConn: udpIn(eastLink.NSA, netip.AddrPortFrom(eastLink.AddrA, 0)),
		Binds:      []meshtest.Bind{{Service: "web"}, {Service: "grpc"}, {Service: "tcp", Opaque: true}}})

	resp, err := testkit.H1Client(t).Get("http://" + east.Bind("web") + "/?size=5000")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(5000)) {
		t.Fatalf("HTTP/1.1: status %d (%s), %d bytes", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError), len(body))
	}
	if got := resp.Header.Get(echo.HeaderPeerIdentity); got != eastID {
		t.Fatalf("west's app saw the caller as %q, want %q", got, eastID)
	}

	checkGRPC(t, east.Bind("grpc"), 20)
	checkTCPEcho(t, east.Bind("tcp"), bytes.Repeat([]byte("tcp through the gateway "), 10000))
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_flows", "state", "relayed"); got != 1 {
		t.Errorf("quicmesh_gateway_flows{state=relayed} = %v, want 1", got)
	}
}

// newLab builds a network-namespace lab removed when the test ends.
func newLab(t *testing.T, name string) *netlab.Lab {
	t.Helper()
	lab, err := netlab.New(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	return lab
}
