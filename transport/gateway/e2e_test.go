package gateway_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

const (
	eastID     = "spiffe://test.local/ns/east/sa/client"
	westID     = "spiffe://test.local/ns/west/sa/server"
	impostorID = "spiffe://test.local/ns/west/sa/impostor"
)

// startGateway runs a gateway relay on loopback routing with router, and
// returns its address and metrics.
func startGateway(t testing.TB, router gateway.Router) (string, *prometheus.Registry) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := gateway.New(gateway.Config{Conn: conn, Router: router, Logger: testkit.DebugLogger(), Metrics: gateway.NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r.Addr().String(), reg
}

// export runs the Exports router of west's services over res until the
// test ends.
func export(t testing.TB, res discovery.Resolver, services ...string) *gateway.Exports {
	t.Helper()
	x := gateway.NewExports(res, services, testkit.DebugLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); x.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-x.Ready():
	case <-testkit.HangCtx(t).Done():
		t.Fatal("exports never resolved")
	}
	return x
}

// East's sidecar reaches west's apps only through the gateway, which
// routes by SNI and relays; the QUIC connection is end to end, so west's
// apps see east's identity, and east verifies west's.
func TestGatewayCarriesHTTPGRPCAndTCPEndToEnd(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	web1 := m.HTTPApp("web1", meshtest.H1, nil)
	web2 := m.HTTPApp("web2", meshtest.H1, nil)
	grpcApp := m.GRPCApp("grpc")
	tcpApp := m.TCPApp("tcp", nil)
	// Two west sidecars serve "web" (one service account): east's one
	// socket reaches both through the gateway, told apart by connection ID.
	w1 := m.Start("west-1", meshtest.Spec{ID: westID, Routes: map[string]string{
		"web": web1.URL("http"), "grpc": grpcApp.URL(""), "tcp": tcpApp.URL("tcp")}})
	w2 := m.Start("west-2", meshtest.Spec{ID: westID, Routes: map[string]string{"web": web2.URL("http")}})

	westRes := static.NewFromMap(map[string][]discovery.Endpoint{
		"web":  {w1.Endpoint(), w2.Endpoint()},
		"grpc": {w1.Endpoint()},
		"tcp":  {w1.Endpoint()},
	})
	t.Cleanup(func() { westRes.Close() })
	gw, reg := startGateway(t, export(t, westRes, "web", "grpc", "tcp"))

	// East's discovery: west's endpoints as the gateway's exports
	// describe them (what the import file lists).
	for _, svc := range []string{"web", "grpc", "tcp"} {
		m.Resolve(svc, gateway.Imports(westEndpoints(westRes, svc), gw)...)
	}
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true,
		Binds: []meshtest.Bind{{Service: "web"}, {Service: "grpc"}, {Service: "tcp", Opaque: true}}})

	t.Run("HTTP/1.1", func(t *testing.T) {
		c := testkit.H1Client(t)
		for i := 0; web1.Hits.Load() == 0 || web2.Hits.Load() == 0; i++ {
			if i == 200 {
				t.Fatalf("200 requests reached web1 %d and web2 %d times; want both", web1.Hits.Load(), web2.Hits.Load())
			}
			resp, err := c.Get("http://" + east.Bind("web") + "/?size=100")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(100)) {
				t.Fatalf("status %d (%s), %d bytes", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError), len(body))
			}
			if got := resp.Header.Get(echo.HeaderPeerIdentity); got != eastID {
				t.Fatalf("west's app saw the caller as %q, want east's %q", got, eastID)
			}
		}
	})

	t.Run("gRPC", func(t *testing.T) { checkGRPC(t, east.Bind("grpc"), 50) })
	t.Run("TCP", func(t *testing.T) {
		checkTCPEcho(t, east.Bind("tcp"), bytes.Repeat([]byte("0123456789abcdef"), 64<<10)) // 1 MiB
	})

	// One QUIC connection per west sidecar, whatever east calls there,
	// each a flow of the gateway.
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_flows", "state", "relayed"); got != 2 {
		t.Errorf("quicmesh_gateway_flows{state=relayed} = %v, want 2 (east to each west sidecar)", got)
	}
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_bytes_total", "direction", "to_destination"); got < 1<<20 {
		t.Errorf("gateway relayed %v bytes to west, want at least the 1 MiB of the TCP test", got)
	}
}

// checkGRPC calls west's gRPC echo app through east's bind: unary (whose
// app must see east's identity) and a server stream of n messages.
func checkGRPC(t *testing.T, bind string, n int) {
	t.Helper()
	conn, err := echo.Dial(bind)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hdr metadata.MD
	out, err := echo.EchoUnary(testkit.HangCtx(t), conn, []byte("hello west"), grpc.Header(&hdr))
	if err != nil || string(out) != "hello west" {
		t.Fatalf("EchoUnary = %q, %v", out, err)
	}
	if got := hdr.Get(echo.MDPeerIdentity); len(got) != 1 || got[0] != eastID {
		t.Fatalf("west's gRPC app saw the caller as %v, want %q", got, eastID)
	}
	msgs, err := echo.StreamN(testkit.HangCtx(t), conn, []byte("s"), n)
	if err != nil || len(msgs) != n {
		t.Fatalf("server stream: %d of %d messages, %v", len(msgs), n, err)
	}
}

// checkTCPEcho sends payload through east's opaque bind to west's TCP
// echo app and wants it back whole.
func checkTCPEcho(t *testing.T, bind string, payload []byte) {
	t.Helper()
	c, err := net.Dial("tcp", bind)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	c.SetReadDeadline(testkit.HangGuard(t))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("TCP echo through the gateway: %d of %d bytes back, %v", len(got), len(payload), err)
	}
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func westEndpoints(res *static.Resolver, svc string) []discovery.Endpoint {
	w, err := res.Resolve(context.Background(), svc)
	if err != nil {
		panic(err)
	}
	defer w.Close()
	u, err := w.Next(context.Background())
	if err != nil {
		panic(err)
	}
	return u.Endpoints
}

// everyone routes every connection to one address: a compromised
// gateway.
type everyone netip.AddrPort

func (e everyone) Route(string) (netip.AddrPort, error) { return netip.AddrPort(e), nil }

// A gateway that sends east's connection to a sidecar with another
// identity (or answers itself with its own certificate) cannot make east
// accept it: east expects west's identity, and the request fails with an
// error that says so; the impostor's app sees nothing.
func TestGatewayCannotImpersonateTheDestination(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	real := m.HTTPApp("real", meshtest.H1, nil)
	fake := m.HTTPApp("fake", meshtest.H1, nil)
	west := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": real.URL("http")}})
	impostor := m.Start("impostor", meshtest.Spec{ID: impostorID, Routes: map[string]string{"web": fake.URL("http")}})
	gw, reg := startGateway(t, everyone(netip.MustParseAddrPort(impostor.InboundAddr().String())))
	m.Resolve("web", gateway.Imports([]discovery.Endpoint{west.Endpoint()}, gw)...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})

	resp, err := testkit.H1Client(t).Get("http://" + east.Bind("web") + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	perr := resp.Header.Get(httpx.HeaderProxyError)
	if resp.StatusCode < 500 || !strings.Contains(perr, impostorID) || !strings.Contains(perr, "refused the server's certificate") {
		t.Fatalf("status %d, %s %q; want a 5xx naming the refused certificate of %s", resp.StatusCode, httpx.HeaderProxyError, perr, impostorID)
	}
	if n := fake.Hits.Load() + real.Hits.Load(); n != 0 {
		t.Fatalf("apps got %d requests", n)
	}
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_flows_routed_total"); got == 0 {
		t.Fatal("the gateway routed nothing: the failure was not the impostor's")
	}
}

// A federated service: east lists its own endpoint of "web" and west's
// through the gateway under one name. Requests stay local while the
// local endpoint is listed, move to west when it is gone and come back
// when it returns, with no failed request under a steady stream of GETs.
func TestFederatedServiceFailsOverToTheGateway(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	local := m.HTTPApp("local", meshtest.H1, nil)
	remote := m.HTTPApp("remote", meshtest.H1, nil)
	eastSrv := m.Start("east-server", meshtest.Spec{ID: "spiffe://test.local/ns/east/sa/server", Routes: map[string]string{"web": local.URL("http")}})
	westSrv := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": remote.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	gw, _ := startGateway(t, export(t, westRes, "web"))
	imported := gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)
	federated := append([]discovery.Endpoint{eastSrv.Endpoint()}, imported...)
	m.Resolve("web", federated...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})

	c := testkit.H1Client(t)
	var failed []string
	get := func() {
		resp, err := c.Get("http://" + east.Bind("web") + "/")
		if err != nil {
			failed = append(failed, err.Error())
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			failed = append(failed, resp.Status+" "+resp.Header.Get(httpx.HeaderProxyError))
		}
	}
	until := func(what string, app *meshtest.App) {
		t.Helper()
		before := app.Hits.Load()
		testkit.Eventually(t, what, func() bool { get(); return app.Hits.Load() > before })
	}
	until("requests served locally", local)
	if n := remote.Hits.Load(); n != 0 {
		t.Fatalf("west served %d requests while the local endpoint was listed", n)
	}
	m.Resolve("web", imported...) // the local endpoints are gone
	until("requests served by west through the gateway", remote)
	localHits := local.Hits.Load()
	for range 20 {
		get()
	}
	if n := local.Hits.Load() - localHits; n != 0 {
		t.Fatalf("%d requests went to the removed local endpoint", n)
	}
	m.Resolve("web", federated...) // back
	until("requests served locally again", local)
	if len(failed) > 0 {
		t.Fatalf("%d requests failed across the failovers, first: %s", len(failed), failed[0])
	}
}

// Garbage sent to the gateway's port (short packets, long headers that do
// not decrypt, Initials of names it does not route) is dropped and
// counted, and costs the relayed traffic of the other cluster nothing:
// every request made during the flood succeeds.
func TestGarbageFloodDoesNotDisturbRelayedTraffic(t *testing.T) {
	m := meshtest.NewOver(t, fallback.QUIC)
	web := m.HTTPApp("web", meshtest.H1, nil)
	westSrv := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": web.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	gw, reg := startGateway(t, export(t, westRes, "web"))
	m.Resolve("web", gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)...)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	c := testkit.H1Client(t)
	getOK := func() {
		t.Helper()
		resp, err := c.Get("http://" + east.Bind("web") + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d during the flood: %s", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
		}
	}
	getOK() // the connection through the gateway is up

	stop := make(chan struct{})
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		var socks []*net.UDPConn
		for range 32 {
			s, err := net.Dial("udp", gw)
			if err != nil {
				return
			}
			defer s.Close()
			socks = append(socks, s.(*net.UDPConn))
		}
		junk := make([]byte, 1300)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for j := range junk {
				junk[j] = byte(i*31 + j*7)
			}
			switch i % 3 {
			case 0: // short header garbage
				junk[0] = 0x40
			case 1: // a long header Initial that does not decrypt
				junk[0], junk[1], junk[2], junk[3], junk[4], junk[5] = 0xc3, 0, 0, 0, 1, 8
			case 2: // too short to be an Initial
				junk[0] = 0xc3
				socks[i%len(socks)].Write(junk[:300])
				continue
			}
			socks[i%len(socks)].Write(junk)
		}
	}()
	for range 50 {
		getOK()
	}
	close(stop)
	<-flooded
	for _, reason := range []string{gateway.DropNotInitial, gateway.DropBadInitial} {
		if n := testkit.MetricSum(t, reg, "quicmesh_gateway_dropped_datagrams_total", "reason", reason); n == 0 {
			t.Errorf("no %s drops counted during the flood", reason)
		}
	}
	testkit.Eventually(t, "no pending flow left by the garbage", func() bool {
		return testkit.MetricSum(t, reg, "quicmesh_gateway_flows", "state", "pending") == 0
	})
	if got := testkit.MetricSum(t, reg, "quicmesh_gateway_flows", "state", "relayed"); got != 1 {
		t.Errorf("quicmesh_gateway_flows{state=relayed} = %v, want east's one connection", got)
	}
}

// BenchmarkGatewayHop is a sequential HTTP/1.1 GET from east's app to
// west's, directly (one sidecar hop, as in-cluster) and through the
// gateway: the difference is the relay's added latency and CPU.
func BenchmarkGatewayHop(b *testing.B) {
	for _, via := range []string{"direct", "gateway"} {
		b.Run(via, func(b *testing.B) {
			m := meshtest.NewOver(b, fallback.QUIC)
			web := m.HTTPApp("web", meshtest.H1, nil)
			westSrv := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": web.URL("http")}})
			if via == "gateway" {
				westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
				b.Cleanup(func() { westRes.Close() })
				gw, _ := startGateway(b, export(b, westRes, "web"))
				m.Resolve("web", gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)...)
			}
			east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
			c := testkit.H1Client(b)
			url := "http://" + east.Bind("web") + "/"
			cpu0 := processCPU(b)
			n := 0
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n++
			}
			// Everything in the process: both sidecars, the apps, the
			// client and, through the gateway, the relay.
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(n), "cpu-µs/op")
		})
	}
}
