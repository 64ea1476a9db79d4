package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// fakeHello stands in for the QUIC Initial parser: a datagram's text
// after "SNI=" (to the next ';') is the server name, "MORE" means the
// ClientHello continues in the next datagram, "BAD" is unreadable.
type fakeHello struct{ name string }

func (h *fakeHello) Feed(b []byte) (string, bool, error) {
	if bytes.Contains(b, []byte("BAD")) {
		return "", false, errors.New("unreadable")
	}
	if bytes.Contains(b, []byte("SKIP")) {
		return "", false, fmt.Errorf("%w: forged", ErrSkipDatagram)
	}
	if _, rest, ok := bytes.Cut(b, []byte("SNI=")); ok {
		name, _, _ := bytes.Cut(rest, []byte(";"))
		h.name = string(name)
	}
	if bytes.Contains(b, []byte("MORE")) {
		return "", false, nil
	}
	return h.name, true, nil
}

// initial is a datagram that looks like a client Initial to the relay,
// to connection ID dcid, carrying text.
func initialTo(dcid, text string) []byte {
	b := make([]byte, 1200)
	b[0], b[4] = 0xc0, 1 // long header, Initial, version 1
	b[5] = byte(len(dcid))
	n := 6 + copy(b[6:], dcid)
	b[n] = 0 // no SCID
	copy(b[n+1:], text)
	return b
}

// initial is initialTo a fixed connection ID.
func initial(text string) []byte { return initialTo("dcid0001", text) }

// short is a short-header packet to connection ID dcid.
func short(dcid, text string) []byte { return []byte("\x40" + dcid + text) }

// mapRouter routes server names by a fixed map.
type mapRouter map[string]netip.AddrPort

func (m mapRouter) Route(name string) (netip.AddrPort, error) {
	if ap, ok := m[name]; ok {
		return ap, nil
	}
	return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrNotExported, name)
}

// upstream is a destination: it records what it receives and answers
// each datagram with a long-header packet from connection ID scid,
// carrying "echo:" and the datagram's first 32 bytes.
type upstream struct {
	conn *net.UDPConn
	scid string
	mu   sync.Mutex
	got  [][]byte
	from map[string]bool
}

func newUpstream(t *testing.T) *upstream { return newUpstreamID(t, "srv0rand") }

func newUpstreamID(t *testing.T, scid string) *upstream {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{conn: c, scid: scid, from: map[string]bool{}}
	hdr := append([]byte{0xe0, 0, 0, 0, 1, 0, byte(len(scid))}, scid...)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.got = append(u.got, append([]byte(nil), buf[:n]...))
			u.from[from.String()] = true
			u.mu.Unlock()
			c.WriteToUDPAddrPort(append(append(bytes.Clone(hdr), "echo:"...), buf[:min(n, 32)]...), from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return u
}

func (u *upstream) addr() netip.AddrPort { return u.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (u *upstream) received() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.got...)
}

func (u *upstream) sources() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.from)
}

type harness struct {
	t     *testing.T
	relay *Relay
	reg   *prometheus.Registry
	clock *fakeClock
}

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newHarness(t *testing.T, router Router, tune func(*Config)) *harness {
	t.Helper()
	testkit.CheckLeaks(t)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, reg: prometheus.NewRegistry(), clock: &fakeClock{}}
	h.clock.ns.Store(time.Now().UnixNano())
	cfg := Config{
		Conn: c, Router: router,
		NewHelloReader: func() HelloReader { return &fakeHello{} },
		Logger:         testkit.DebugLogger(),
		Metrics:        NewMetrics(h.reg),
		Now:            h.clock.now,
	}
	if tune != nil {
		tune(&cfg)
	}
	h.relay, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.relay.Close() })
	return h
}

// client is a UDP socket talking to the relay.
func (h *harness) client() *net.UDPConn {
	h.t.Helper()
	c, err := net.DialUDP("udp", nil, h.relay.Addr().(*net.UDPAddr))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func (h *harness) send(c *net.UDPConn, b []byte) {
	h.t.Helper()
	if _, err := c.Write(b); err != nil {
		h.t.Fatal(err)
	}
}

// recv waits for the relay's next datagram to c and returns what
// follows the destination's header.
func (h *harness) recv(c *net.UDPConn) string {
	h.t.Helper()
	c.SetReadDeadline(testkit.HangGuard(h.t))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		h.t.Fatalf("reading the relay's answer: %v", err)
	}
	_, scid, ok := longHeaderConnIDs(buf[:n])
	if !ok {
		h.t.Fatalf("the relay's answer %q is not the destination's", buf[:n])
	}
	return string(buf[7+len(scid) : n])
}

func (h *harness) drops(reason string) float64 {
	return testkit.MetricSum(h.t, h.reg, "quicmesh_gateway_dropped_datagrams_total", "reason", reason)
}

func (h *harness) waitDrops(reason string, n float64) {
	h.t.Helper()
	testkit.Eventually(h.t, fmt.Sprintf("%v %s drops", n, reason), func() bool { return h.drops(reason) >= n })
}

func (h *harness) waitFlows(relayed, pending int) {
	h.t.Helper()
	testkit.Eventually(h.t, fmt.Sprintf("%d relayed and %d pending flows", relayed, pending), func() bool {
		r, p := h.relay.Flows()
		return r == relayed && p == pending
	})
}

func TestRelaysBothWaysByServerName(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr(), "b": b.addr()}, nil)
	ca, cb := h.client(), h.client()

	h.send(ca, initial("SNI=a;hello"))
	if got := h.recv(ca); !strings.HasPrefix(got, "echo:\xc0") {
		t.Fatalf("client a got %q, want the echo of its Initial", got)
	}
	h.send(cb, initial("SNI=b;hello"))
	h.recv(cb)
	// Later datagrams of a flow need not look like Initials: short
	// headers, any size.
	h.send(ca, []byte("\x40short-a"))
	if got := h.recv(ca); got != "echo:\x40short-a" {
		t.Fatalf("client a got %q, want its short packet echoed", got)
	}
	h.send(cb, []byte("\x40short-b"))
	if got := h.recv(cb); got != "echo:\x40short-b" {
		t.Fatalf("client b got %q", got)
	}
	for _, u := range []*upstream{a, b} {
		got := u.received()
		if len(got) != 2 || u.sources() != 1 {
			t.Errorf("destination got %d datagrams from %d sources, want 2 from 1", len(got), u.sources())
		}
	}
	if got := string(a.received()[1]); got != "\x40short-a" {
		t.Errorf("destination a got %q second, want client a's packet", got)
	}
	h.waitFlows(2, 0)
	if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_flows", "state", "relayed"); got != 2 {
		t.Errorf("quicmesh_gateway_flows{state=relayed} = %v, want 2", got)
	}
	// Counted once sent: the echo may come back before the count.
	testkit.Eventually(t, "2 Initials and 2 short packets counted", func() bool {
		return testkit.MetricSum(t, h.reg, "quicmesh_gateway_bytes_total", "direction", "to_destination") == 2*1200+2*8
	})
}

func TestClientHelloOverSeveralDatagrams(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, nil)
	c := h.client()
	h.send(c, initial("SNI=a;MORE;part1"))
	h.waitFlows(0, 1)
	if n := len(a.received()); n != 0 {
		t.Fatalf("destination got %d datagrams before the ClientHello was complete", n)
	}
	h.send(c, initial("part2"))
	h.recv(c)
	h.recv(c)
	got := a.received()
	if len(got) != 2 || !bytes.Contains(got[0], []byte("part1")) || !bytes.Contains(got[1], []byte("part2")) {
		t.Fatalf("destination got %d datagrams, want part1 then part2", len(got))
	}
	h.waitFlows(1, 0)
}

// A sidecar dials every peer from one socket: its connections to two
// endpoints behind the gateway share the client address and are told
// apart by the connection IDs the destinations chose, whose prefix
// stays when the client moves to another of them.
func TestConnectionsFromOneAddressByConnectionID(t *testing.T) {
	a, b := newUpstreamID(t, "aaaa-rand-01"), newUpstreamID(t, "bbbb-rand-01")
	h := newHarness(t, mapRouter{"a": a.addr(), "b": b.addr()}, nil)
	c := h.client()
	h.send(c, initialTo("client-1", "SNI=a;"))
	h.recv(c)
	h.send(c, initialTo("client-2", "SNI=b;"))
	h.recv(c)
	h.waitFlows(2, 0)

	handshake := append([]byte{0xe0, 0, 0, 0, 1, 12}, "bbbb-rand-01\x00hs"...)
	for _, p := range [][]byte{
		short("aaaa-rand-01", "to-a-1"),
		short("bbbb-moved-77", "to-b-1"), // another ID of b's: same prefix
		short("aaaa-moved-42", "to-a-2"),
		handshake,
		initialTo("client-1", "to-a-3"), // a retransmitted Initial
	} {
		h.send(c, p)
		h.recv(c)
	}
	has := func(u *upstream, text string) bool {
		for _, d := range u.received() {
			if bytes.Contains(d, []byte(text)) {
				return true
			}
		}
		return false
	}
	for _, text := range []string{"to-a-1", "to-a-2", "to-a-3"} {
		if !has(a, text) || has(b, text) {
			t.Errorf("%q reached a: %v, b: %v; want a only", text, has(a, text), has(b, text))
		}
	}
	for _, text := range []string{"to-b-1", "hs"} {
		if !has(b, text) || has(a, text) {
			t.Errorf("%q reached b: %v, a: %v; want b only", text, has(b, text), has(a, text))
		}
	}
	// An ID neither destination chose is no one's.
	before := h.drops(DropNotInitial)
	h.send(c, short("zzzz-rand-01", "lost"))
	h.waitDrops(DropNotInitial, before+1)
	if has(a, "lost") || has(b, "lost") {
		t.Error("a packet to an unknown connection ID was relayed")
	}
}

func TestSkippedDatagramKeepsTheFlow(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, nil)
	c := h.client()
	h.send(c, initial("SNI=a;MORE"))
	h.send(c, initial("SKIP"))
	h.waitDrops(DropBadInitial, 1)
	h.waitFlows(0, 1)
	h.send(c, initial("end"))
	h.recv(c)
	h.recv(c)
	if got := a.received(); len(got) != 2 || bytes.Contains(got[1], []byte("SKIP")) {
		t.Fatalf("destination got %d datagrams; want the two that were not skipped", len(got))
	}
}

func TestGarbageIsDroppedAndFlowsCarryOn(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, nil)
	good := h.client()
	h.send(good, initial("SNI=a;"))
	h.recv(good)

	bad := h.client()
	garbage := [][]byte{
		[]byte("\x40short header from nowhere"),
		initial("SNI=a;")[:1199],                                // an Initial must be padded to 1200
		append([]byte{0xc0, 0, 0, 0, 0}, make([]byte, 1300)...), // version negotiation
		{},
	}
	for _, g := range garbage {
		h.send(bad, g)
	}
	h.waitDrops(DropNotInitial, float64(len(garbage)))
	h.send(bad, initial("BAD"))
	h.waitDrops(DropBadInitial, 1)
	h.send(bad, initial("SNI=nobody;"))
	h.waitDrops(DropNoRoute, 1)
	h.waitFlows(1, 0)

	h.send(good, []byte("\x40still here"))
	if got := h.recv(good); got != "echo:\x40still here" {
		t.Fatalf("the relayed flow got %q after the garbage", got)
	}
	// The refused client may try again and be routed once its name is
	// one the gateway routes.
	h.send(bad, initial("SNI=a;"))
	h.recv(bad)
	h.waitFlows(2, 0)
}

func TestLimits(t *testing.T) {
	a := newUpstream(t)
	t.Run("flows", func(t *testing.T) {
		h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) { c.MaxFlows = 2 })
		c1, c2, c3 := h.client(), h.client(), h.client()
		h.send(c1, initial("SNI=a;"))
		h.recv(c1)
		h.send(c2, initial("SNI=a;"))
		h.recv(c2)
		h.send(c3, initial("SNI=a;"))
		h.waitDrops(DropFlowsFull, 1)
		h.waitFlows(2, 0)
	})
	t.Run("pending flows", func(t *testing.T) {
		h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) { c.MaxPendingFlows = 2 })
		c1, c2, c3 := h.client(), h.client(), h.client()
		h.send(c1, initial("SNI=a;MORE"))
		h.send(c2, initial("SNI=a;MORE"))
		h.waitFlows(0, 2)
		h.send(c3, initial("SNI=a;MORE"))
		h.waitDrops(DropPendingFull, 1)
		// Pending flows never take the place of a relayed one: a client
		// whose ClientHello is complete still needs a pending slot for
		// its first datagram, and completing frees it.
		h.send(c1, initial("end"))
		h.recv(c1)
		h.waitFlows(1, 1)
		h.send(c3, initial("SNI=a;"))
		h.recv(c3)
		h.waitFlows(2, 1)
	})
	t.Run("pending bytes", func(t *testing.T) {
		h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) { c.MaxPendingBytes = 3000 })
		c := h.client()
		h.send(c, initial("SNI=a;MORE"))
		h.send(c, initial("MORE"))
		h.waitFlows(0, 1)
		h.send(c, initial("MORE"))
		h.waitDrops(DropPendingBytes, 1)
		h.waitFlows(0, 0)
	})
}

func TestIdleFlowsExpire(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) {
		c.IdleTimeout = time.Minute
		c.PendingTimeout = 3 * time.Second
	})
	relayed, pending := h.client(), h.client()
	h.send(relayed, initial("SNI=a;"))
	h.recv(relayed)
	h.send(pending, initial("SNI=a;MORE"))
	h.waitFlows(1, 1)

	h.clock.advance(4 * time.Second) // past the pending timeout only
	h.waitFlows(1, 0)
	h.clock.advance(time.Minute) // past the idle timeout
	h.waitFlows(0, 0)
	// The expired flow's later packets are from an unknown address now.
	before := h.drops(DropNotInitial)
	h.send(relayed, []byte("\x40late"))
	h.waitDrops(DropNotInitial, before+1)
	if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_flows", "state", "relayed"); got != 0 {
		t.Errorf("quicmesh_gateway_flows{state=relayed} = %v after expiry, want 0", got)
	}
}

// Traffic in either direction keeps a flow alive.
func TestActiveFlowsDoNotExpire(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) { c.IdleTimeout = time.Minute })
	c := h.client()
	h.send(c, initial("SNI=a;"))
	h.recv(c)
	for range 3 {
		h.clock.advance(40 * time.Second)
		h.send(c, []byte("\x40ping"))
		h.recv(c)
	}
	if r, _ := h.relay.Flows(); r != 1 {
		t.Fatalf("%d relayed flows after 120 s of traffic with a 60 s idle timeout, want 1", r)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, nil)
	c := h.client()
	h.send(c, initial("SNI=a;"))
	h.recv(c)
	if err := h.relay.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r, p := h.relay.Flows(); r+p != 0 {
		t.Fatalf("%d flows after Close", r+p)
	}
	// testkit.CheckLeaks (armed by newHarness) checks the goroutines.
}
