package sidecar_test

// End-to-end tests with a real network link between the two sidecars: each
// sidecar's UDP socket is bound inside its own network namespace
// (bench/netlab), so every QUIC packet crosses a veth pair or the TUN link
// emulator where it can be dropped, blocked or delayed. Apps, outbound
// listeners and test clients stay on 127.0.0.1 in the root namespace. The
// tests need root and skip with netlab's reason otherwise.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// nsMesh is a client sidecar (A) and a server sidecar (B) whose QUIC
// sockets live at the two ends of a netlab link.
type nsMesh struct {
	link           *netlab.Link
	tcpApp         *meshtest.App
	webHits        *atomic.Int64
	server, client *meshtest.Sidecar
	binds          map[string]string // service → client sidecar listener
}

var nsServices = []string{"echo", "web", "grpc"}

// newNetnsMesh builds the lab and link with mkLink, then the apps and both
// sidecars. Everything is torn down by t.Cleanup, the lab last.
// These tests are about QUIC over a real link: QUIC only (the fallback
// to TCP has its own, TestNetnsBlockedUDPFallsBackToTCP).
func newNetnsMesh(t *testing.T, mkLink func(*netlab.Lab) (*netlab.Link, error)) *nsMesh {
	t.Helper()
	return newNetnsMeshWith(t, mkLink, nsOptions{mode: fallback.QUIC, limits: transport.Limits{HandshakeTimeout: time.Second}})
}

// nsOptions are what differs between the netns meshes: the transport
// mode of both sidecars, the limits of both, the client's fallback
// tuning.
type nsOptions struct {
	mode     fallback.Mode
	limits   transport.Limits
	fallback sidecar.Fallback
}

func newNetnsMeshWith(t *testing.T, mkLink func(*netlab.Lab) (*netlab.Link, error), o nsOptions) *nsMesh {
	t.Helper()
	testkit.NeedNetns(t, netlab.Available)
	mesh := meshtest.New(t)
	lab, err := netlab.New("qm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	link, err := mkLink(lab)
	if err != nil {
		t.Fatal(err)
	}

	web := mesh.HTTPApp("web", meshtest.H1, nil)
	m := &nsMesh{link: link, tcpApp: mesh.TCPApp("echo", nil), webHits: &web.Hits, binds: map[string]string{}}
	grpcApp := mesh.GRPCApp("grpc")

	serverAddr := netip.AddrPortFrom(link.AddrB, 4143)
	server := meshtest.Spec{
		ID:         echoID,
		PacketConn: udpIn(t, lab, link.NSB, serverAddr),
		Transport:  o.mode,
		Limits:     o.limits,
		Routes: map[string]string{
			"echo": m.tcpApp.URL("tcp"),
			"web":  web.URL("http"),
			"grpc": grpcApp.URL("h2c"),
		},
	}
	if o.mode != fallback.QUIC {
		server.TCPListener = tcpIn(t, lab, link.NSB, serverAddr)
	}
	m.server = mesh.Start("server", server)
	if got := m.server.InboundAddr().AddrPort(); got != serverAddr {
		t.Fatalf("server sidecar on %v, want %v", got, serverAddr)
	}

	var binds []meshtest.Bind
	for _, svc := range nsServices {
		binds = append(binds, meshtest.Bind{Service: svc})
	}
	m.client = mesh.Start("client", meshtest.Spec{
		ID:          clientID,
		PacketConn:  udpIn(t, lab, link.NSA, netip.AddrPortFrom(link.AddrA, 0)),
		Binds:       binds,
		Limits:      o.limits,
		Transport:   o.mode,
		Fallback:    o.fallback,
		TCPListener: tcpIn(t, lab, link.NSA, netip.AddrPortFrom(link.AddrA, 0)),
		DialTCP: func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = lab.Do(link.NSA, func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, "tcp", addr)
				return err
			})
			return c, err
		},
	})
	for _, svc := range nsServices {
		m.binds[svc] = m.client.Bind(svc)
	}
	return m
}

// udpIn binds a UDP socket inside namespace ns.
func udpIn(t *testing.T, lab *netlab.Lab, ns string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := lab.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // the sidecar owns it; this covers a failed Start
	return c
}

// tcpIn binds a TCP listener inside namespace ns.
func tcpIn(t *testing.T, lab *netlab.Lab, ns string, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := lab.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (m *nsMesh) dial(t *testing.T, svc string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", m.binds[svc])
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// quicStats sums the client's pooled QUIC connections' counters.
func (m *nsMesh) quicStats() (conns int, sent, lost uint64, rtt time.Duration) {
	for _, s := range m.client.Pool().QUICStats() {
		conns++
		sent += s.PacketsSent
		lost += s.PacketsLost
		rtt = max(rtt, s.RTT)
	}
	return
}

func TestNetnsBlockedUDPFailsFastAndRecovers(t *testing.T) {
	m := newNetnsMesh(t, func(l *netlab.Lab) (*netlab.Link, error) { return l.Pair("a", "b", "10.77.20.0/24") })
	if err := m.link.BlockUDP(true); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	c := m.dial(t, "echo")
	c.Write([]byte("secret"))
	c.SetReadDeadline(testkit.HangGuard(t))
	n, err := c.Read(make([]byte, 16))
	c.Close()
	failedAfter := time.Since(start)
	if err == nil || n > 0 {
		t.Fatalf("read %d bytes, err %v, with UDP blocked", n, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("client hung with UDP blocked instead of getting an error")
	}
	// Expect about 2 s: "secret" is not HTTP, so protocol detection waits
	// its 1 s timeout for more bytes, then the dial gives up after the 1 s
	// handshake timeout. Without that timeout the client would wait for
	// the 60 s QUIC idle timeout or forever; the bound sits between the
	// two so that load, which stretches the 2 s, cannot reach it.
	if failedAfter > failFastBound {
		t.Fatalf("TCP client got %v after %v; want it well before the idle timeout (1s handshake timeout)", err, failedAfter)
	}
	t.Logf("UDP blocked: TCP client got %q after %v", err, failedAfter.Round(time.Millisecond))

	start = time.Now()
	resp, err := testkit.H1Client(t).Get("http://" + m.binds["web"] + "/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode < 500 {
			t.Fatalf("HTTP request with UDP blocked: status %d", resp.StatusCode)
		}
		t.Logf("UDP blocked: HTTP client got status %d (%s) after %v", resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error"), time.Since(start).Round(time.Millisecond))
	} else {
		t.Logf("UDP blocked: HTTP client got %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	if time.Since(start) > failFastBound {
		t.Fatalf("HTTP client waited %v with UDP blocked", time.Since(start))
	}
	if a, h := m.tcpApp.Hits.Load(), m.webHits.Load(); a != 0 || h != 0 {
		t.Fatalf("with UDP blocked the apps saw %d TCP connections and %d HTTP requests", a, h)
	}
	if m.client.Pool().Len() != 0 {
		t.Fatal("a connection is pooled although no packet crossed the link")
	}

	if err := m.link.BlockUDP(false); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for {
		var got []byte
		c, err := net.Dial("tcp", m.binds["echo"])
		if err == nil {
			got, err = roundTrip(t, c.(*net.TCPConn), []byte("back"))
			c.Close()
		}
		if err == nil && string(got) == "back" {
			break
		}
		if time.Now().After(testkit.HangGuard(t)) {
			t.Fatalf("no recovery %v after unblocking: %q %v", time.Since(start), got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("UDP unblocked: traffic recovered after %v", time.Since(start).Round(time.Millisecond))
	resp, err = testkit.H1Client(t).Get("http://" + m.binds["web"] + "/?size=10")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(10)) {
		t.Fatalf("HTTP after recovery: status %d body %q", resp.StatusCode, body)
	}
}

func TestNetnsLoss(t *testing.T) {
	// Checked here, not only in the subtests: a parent whose subtests all
	// skip reports PASS.
	testkit.NeedNetns(t, netlab.Available)
	for i, pct := range []float64{2, 0.5} {
		t.Run(fmt.Sprintf("%v%%", pct), func(t *testing.T) {
			subnet := fmt.Sprintf("10.77.%d.0/24", 21+i)
			m := newNetnsMesh(t, func(l *netlab.Lab) (*netlab.Link, error) { return l.Pair("a", "b", subnet) })
			if err := m.link.SetLoss(pct); err != nil {
				t.Fatal(err)
			}
			m.lossWorkload(t)
			conns, sent, lost, rtt := m.quicStats()
			t.Logf("client QUIC: %d connection(s), %d packets sent, %d declared lost (%.2f%%), smoothed RTT %v",
				conns, sent, lost, 100*float64(lost)/float64(max(sent, 1)), rtt)
			if conns != 1 {
				t.Fatalf("%d pooled QUIC connections, want 1", conns)
			}
			dropped, _, err := m.link.Drops()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the %v%% loss rules dropped %d packets (both directions)", pct, dropped)
			if lost == 0 || float64(dropped) < pct/100*float64(sent)/2 {
				t.Fatalf("the loss rules dropped %d packets and QUIC declared %d lost of %d sent: not the %v%% loss asked for", dropped, lost, sent, pct)
			}
		})
	}
}

// lossWorkload runs the bulk, HTTP and gRPC checks; each must finish with
// zero failures. How long it takes is logged, not asserted: load stretches
// it (a 40 s bound failed on a loaded machine), and what loss costs in
// time is measured by make bench's lossy scenarios.
func (m *nsMesh) lossWorkload(t *testing.T) {
	t.Helper()
	begin := time.Now()

	// 16 MiB through a TCP tunnel and back, byte-identical.
	payload := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{16}).Read(payload)
	start := time.Now()
	c := m.dial(t, "echo")
	got, err := roundTrip(t, c, payload)
	c.Close()
	if err != nil {
		t.Fatalf("16 MiB echo: %v after %d bytes", err, len(got))
	}
	if len(got) != len(payload) || sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("16 MiB echo: got %d bytes, content equal=%v", len(got), bytes.Equal(got, payload))
	}
	d := time.Since(start)
	t.Logf("16 MiB TCP echo: byte-identical in %v (%.1f MiB/s each way)", d.Round(time.Millisecond), 16/d.Seconds())

	// 200 HTTP/1.1 requests, 8 at a time, bodies of different sizes.
	start = time.Now()
	hc := testkit.H1Client(t)
	const nreq = 200
	var failed atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		failed.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	var wg sync.WaitGroup
	work := make(chan int)
	lat := make([]time.Duration, nreq)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				body := bytes.Repeat([]byte{byte(i)}, 1+i*97)
				s := time.Now()
				resp, err := hc.Post("http://"+m.binds["web"]+"/", "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					fail(err)
					continue
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(s)
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
					fail(fmt.Errorf("request %d: status %d, %d of %d bytes, %v", i, resp.StatusCode, len(got), len(body), err))
				}
			}
		}()
	}
	for i := range nreq {
		work <- i
	}
	close(work)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d HTTP/1.1 requests failed; first: %v", n, nreq, firstErr.Load())
	}
	if h := m.webHits.Load(); h != nreq {
		t.Fatalf("app saw %d requests, want %d", h, nreq)
	}
	slices.Sort(lat)
	t.Logf("%d HTTP/1.1 requests: all OK in %v (latency p50 %v, p99 %v, max %v)", nreq, time.Since(start).Round(time.Millisecond),
		lat[nreq/2].Round(time.Microsecond), lat[nreq*99/100].Round(time.Microsecond), lat[nreq-1].Round(time.Microsecond))

	// 50 concurrent gRPC bidi streams, 20 interleaved round trips each.
	start = time.Now()
	cc := testkit.GRPCConn(t, m.binds["grpc"])
	ctx, cancel := context.WithDeadline(context.Background(), testkit.HangGuard(t))
	defer cancel()
	const streams, msgs = 50, 20
	errs := make(chan error, streams)
	ready := make(chan struct{})
	for s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := echo.Bidi(ctx, cc)
			if err != nil {
				errs <- fmt.Errorf("stream %d: open: %w", s, err)
				return
			}
			<-ready
			for i := range msgs {
				msg := []byte(fmt.Sprintf("stream %d message %d %s", s, i, strings.Repeat("x", s*i)))
				got, err := b.RoundTrip(msg)
				if err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("stream %d message %d: %q, %v", s, i, got, err)
					return
				}
			}
			b.CloseSend()
			if _, err := b.Recv(); err != io.EOF {
				errs <- fmt.Errorf("stream %d: after CloseSend: %v, want EOF", s, err)
			}
		}()
	}
	close(ready)
	wg.Wait()
	close(errs)
	nerr := 0
	for err := range errs {
		if nerr == 0 {
			t.Error(err)
		}
		nerr++
	}
	if nerr > 0 {
		t.Fatalf("%d of %d gRPC bidi streams failed", nerr, streams)
	}
	t.Logf("%d concurrent gRPC bidi streams × %d round trips: all OK in %v", streams, msgs, time.Since(start).Round(time.Millisecond))

	t.Logf("whole workload: %v", time.Since(begin).Round(time.Millisecond))
}

func TestNetnsDelayOneRTTPerRequest(t *testing.T) {
	testkit.NeedNetns(t, netlab.TUNAvailable)
	const oneWay = 20 * time.Millisecond
	const rtt = 2 * oneWay
	m := newNetnsMesh(t, func(l *netlab.Lab) (*netlab.Link, error) {
		return l.DelayPair("a", "b", "10.77.23.0/24", oneWay, 0)
	})
	hc := testkit.H1Client(t)
	get := func() time.Duration {
		t.Helper()
		start := time.Now()
		resp, err := hc.Get("http://" + m.binds["web"] + "/?size=100")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, echo.Body(100)) {
			t.Fatalf("status %d, %d bytes, %v", resp.StatusCode, len(body), err)
		}
		return d
	}
	cold := get() // handshake + request
	const n = 20
	var lat []time.Duration
	_, sentBefore, _, _ := m.quicStats()
	for i := range n {
		lat = append(lat, get())
		// Every warm request rides the first connection: one pooled
		// connection whose packet count only grows (a replacement would
		// start again from a handful of packets).
		conns, sent, _, _ := m.quicStats()
		if conns != 1 || sent < sentBefore {
			t.Fatalf("after warm request %d: %d pooled connections, %d packets sent (%d before): not one pooled connection", i, conns, sent, sentBefore)
		}
		sentBefore = sent
	}
	slices.Sort(lat)
	conns, _, _, qrtt := m.quicStats()
	t.Logf("%v one-way delay: first request (with handshake) %v; %d warm requests min %v median %v max %v; QUIC smoothed RTT %v",
		oneWay, cold.Round(time.Millisecond), n, lat[0].Round(time.Microsecond), lat[n/2].Round(time.Microsecond), lat[n-1].Round(time.Microsecond), qrtt.Round(time.Microsecond))
	if lat[0] < rtt {
		t.Fatalf("fastest warm request took %v, less than one %v round trip: the link delay is not in the path", lat[0], rtt)
	}
	// Only lower bounds on latency: load can add to any figure but cannot
	// take the emulated delay away. (An upper bound on the slowest request,
	// 4 round trips, failed on a loaded machine; that requests reuse the
	// pooled connection is checked on the connection itself above.)
	if cold < 2*rtt {
		t.Fatalf("first request took %v: a new QUIC connection needs at least 2 round trips (%v)", cold, 2*rtt)
	}
	if conns != 1 || m.client.Pool().Len() != 1 {
		t.Fatalf("%d pooled QUIC connections, want 1", conns)
	}
	if qrtt < rtt {
		t.Fatalf("QUIC measured RTT %v, less than the emulated %v", qrtt, rtt)
	}
}
