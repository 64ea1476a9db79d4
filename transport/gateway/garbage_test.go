package gateway_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
	"github.com/quicmesh/quicmesh/transport/quicinitial"
)

// captureFirstFlight is what a real client (quic-go, as in a sidecar)
// sends first to a server named name: its Initial datagrams, with a
// post-quantum key share so that the ClientHello spans two of them. The
// test checks that: the first alone is an incomplete ClientHello.
func captureFirstFlight(t *testing.T, name string) [][]byte {
	t.Helper()
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	ctx, cancel := context.WithCancel(testkit.HangCtx(t))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := quic.DialAddr(ctx, sink.LocalAddr().String(), &tls.Config{
			ServerName: name, NextProtos: []string{transport.ALPN}, InsecureSkipVerify: true,
			CurvePreferences: []tls.CurveID{tls.X25519MLKEM768},
		}, nil)
		if err == nil {
			conn.CloseWithError(0, "")
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	sink.SetReadDeadline(testkit.HangGuard(t))
	var flight [][]byte
	var a quicinitial.Assembler
	for {
		buf := make([]byte, 2048)
		n, err := sink.Read(buf)
		if err != nil {
			t.Fatalf("capturing quic-go's Initials: %v", err)
		}
		h, complete, err := a.Feed(buf[:n])
		if err != nil {
			continue // a retransmission
		}
		flight = append(flight, buf[:n])
		if complete {
			if len(flight) < 2 || h.ServerName != name {
				t.Fatalf("captured ClientHello: %d datagrams, server name %q; want 2 or more, %q", len(flight), h.ServerName, name)
			}
			return flight
		}
	}
}

// A remote cluster (its own address, 127.0.0.2) sends the gateway
// garbage while another (127.0.0.1) uses it: random bytes, real
// Initials for a server name the gateway does not route, the first
// datagram only of a ClientHello that spans two (a flow left pending),
// forged Initials (a flipped byte: they do not decrypt) and truncated
// ones. The other cluster's requests on its connection all succeed, a
// sidecar of it that starts during the flood connects through the
// gateway, and the flooder holds at most its per-address share of
// pending flows.
//
// The flood is paced (floodRate datagrams a second, 2.7 MB/s): the test
// is about what the garbage leaves of the relay's state. A flood faster
// than the gateway can read overflows its socket's receive buffer in the
// kernel, which drops datagrams of every sender alike; no relay logic
// can help there (docs/benchmarks.md, "Gateway (issue 16)").
func TestGarbageFromOneClusterSparesAnother(t *testing.T) {
	const (
		maxPendingPerIP = 8
		floodRate       = 2000
	)
	m := meshtest.NewOver(t, fallback.QUIC)
	web := m.HTTPApp("web", meshtest.H1, nil)
	westSrv := m.Start("west", meshtest.Spec{ID: westID, Routes: map[string]string{"web": web.URL("http")}})
	westRes := static.NewFromMap(map[string][]discovery.Endpoint{"web": {westSrv.Endpoint()}})
	t.Cleanup(func() { westRes.Close() })
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	relay, err := gateway.New(gateway.Config{Conn: conn, Router: export(t, westRes, "web"),
		MaxPendingFlows: 64, MaxPendingPerIP: maxPendingPerIP,
		Logger: testkit.DebugLogger(), Metrics: gateway.NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	gw := relay.Addr().String()
	m.Resolve("web", gateway.Imports([]discovery.Endpoint{westSrv.Endpoint()}, gw)...)

	unknown := captureFirstFlight(t, "any.nosuch."+gateway.Suffix)
	east := m.Start("east", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	c := testkit.H1Client(t)
	get := func(bind string) {
		t.Helper()
		resp, err := c.Get("http://" + bind + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d during the flood: %s", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError))
		}
	}
	get(east.Bind("web")) // east's connection through the gateway is up

	var socks []*net.UDPConn
	for range 64 {
		s, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, relay.Addr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		socks = append(socks, s)
	}
	forged := append([]byte(nil), unknown[0]...)
	forged[len(forged)-20] ^= 0xff // in the AEAD tag or payload: does not decrypt
	stop := make(chan struct{})
	var flooded sync.WaitGroup
	var sent atomic.Int64
	flooded.Add(1)
	go func() {
		defer flooded.Done()
		junk := make([]byte, 1350)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if i%(floodRate/100) == 0 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
			s := socks[i%len(socks)]
			switch i % 5 {
			case 0: // random bytes, of Initial size
				rand.Read(junk)
				s.Write(junk)
			case 1: // the first half of a ClientHello: a pending flow
				s.Write(unknown[0])
			case 2: // a whole ClientHello naming nothing exported
				for _, d := range unknown {
					s.Write(d)
				}
			case 3:
				s.Write(forged)
			case 4: // truncated below an Initial's 1200 bytes
				s.Write(unknown[0][:1000])
			}
			sent.Add(1)
		}
	}()
	var maxPending atomic.Int64
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, pending := relay.Flows()
			if p := int64(pending); p > maxPending.Load() {
				maxPending.Store(p)
			}
			time.Sleep(time.Millisecond) // a sample a millisecond: no busy loop
		}
	}()
	defer func() { close(stop); flooded.Wait(); <-watchDone }()

	// Half a second of flood first: every flooding socket has sent a
	// first half of a ClientHello several times over.
	testkit.Eventually(t, "half a second of flood", func() bool { return sent.Load() >= floodRate/2 })
	for range 50 {
		get(east.Bind("web"))
	}
	// A new connection from the spared cluster during the flood.
	east2 := m.Start("east-2", meshtest.Spec{ID: eastID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	get(east2.Bind("web"))

	for _, reason := range []string{gateway.DropNotInitial, gateway.DropBadInitial, gateway.DropNoRoute, gateway.DropPendingPerIP} {
		if n := testkit.MetricSum(t, reg, "quicmesh_gateway_dropped_datagrams_total", "reason", reason); n == 0 {
			t.Errorf("no %s drops counted during the flood (%d datagrams sent)", reason, sent.Load())
		}
	}
	// The flooder's share, plus the handshakes of east's two sidecars.
	if p := maxPending.Load(); p > maxPendingPerIP+2 {
		t.Errorf("up to %d pending flows during the flood, want at most %d (the flooder's share) + 2", p, maxPendingPerIP)
	}
	if relayed, _ := relay.Flows(); relayed != 2 {
		t.Errorf("%d relayed flows, want east's two connections", relayed)
	}
}
