package gateway

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// A connection another gateway routed arrives here as short-header
// packets of no known flow, from an address that may already have flows
// here. Its connection ID prefix, learned from a flow this relay routed
// to the same destination, sends it there (taken over); the
// destination's answer makes it a relayed flow. A prefix nobody learned
// is dropped as before.
func TestTakeOverByConnectionIDPrefix(t *testing.T) {
	a, b := newUpstreamID(t, "aaaa-rand-01"), newUpstreamID(t, "bbbb-rand-01")
	h := newHarness(t, mapRouter{"a": a.addr(), "b": b.addr()}, nil)
	// Another client's flow to b teaches the relay b's prefix.
	other := h.client()
	h.send(other, initial("SNI=b;"))
	h.recv(other)
	if got := h.relay.Routes(); got != 1 {
		t.Fatalf("%d routes learned, want 1 (b's)", got)
	}

	// c has one flow, to a; a packet of its connection to b (routed by
	// another gateway until now) must go to b, not to c's one flow.
	c := h.client()
	h.send(c, initial("SNI=a;"))
	h.recv(c)
	h.send(c, short("bbbb-moved-77", "migrated"))
	if got := h.recv(c); got != "echo:\x40bbbb-moved-77migrated" {
		t.Fatalf("c got %q, want b's echo of its packet", got)
	}
	for _, d := range a.received() {
		if bytes.Contains(d, []byte("migrated")) {
			t.Fatal("the taken-over packet reached a, c's other flow's destination")
		}
	}
	if got := b.sources(); got != 2 {
		t.Errorf("b saw %d source addresses, want 2 (a socket per flow)", got)
	}
	h.waitFlows(3, 0)
	if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_takeovers_total"); got != 1 {
		t.Errorf("quicmesh_gateway_takeovers_total = %v, want 1", got)
	}
	// Later packets follow the flow.
	h.send(c, short("bbbb-rand-01", "again"))
	if got := h.recv(c); got != "echo:\x40bbbb-rand-01again" {
		t.Fatalf("c got %q", got)
	}

	before := h.drops(DropNotInitial)
	h.send(h.client(), short("zzzz-rand-01", "nobody's"))
	h.waitDrops(DropNotInitial, before+1)
	h.waitFlows(3, 0)
}

// A taken-over flow whose destination does not answer (a spoofed packet
// with a prefix seen on the wire) is pending: bounded by MaxPendingFlows
// and dropped after PendingTimeout.
func TestTakeOverIsPendingUntilAnswered(t *testing.T) {
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	h := newHarness(t, mapRouter{}, func(c *Config) { c.MaxPendingFlows = 1 })
	h.relay.mu.Lock()
	h.relay.learnRoute([]byte("sil0"), silent.LocalAddr().(*net.UDPAddr).AddrPort())
	h.relay.mu.Unlock()

	h.send(h.client(), short("sil0-spoofed", "x"))
	h.waitFlows(0, 1)
	h.send(h.client(), short("sil0-spoofed", "y"))
	h.waitDrops(DropPendingFull, 1)
	h.waitFlows(0, 1)

	h.clock.advance(DefaultPendingTimeout + time.Second)
	h.waitFlows(0, 0)
	if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_takeovers_total"); got != 0 {
		t.Errorf("quicmesh_gateway_takeovers_total = %v, want 0", got)
	}
}

// listRouter is mapRouter that lists its destinations, so the relay
// probes them.
type listRouter struct{ mapRouter }

func (l listRouter) Destinations() []netip.AddrPort {
	var out []netip.AddrPort
	for _, ap := range l.mapRouter {
		out = append(out, ap)
	}
	return out
}

// fixedPrefix issues 12-byte connection IDs starting with a fixed
// prefix, as a sidecar's socket does.
type fixedPrefix string

func (p fixedPrefix) GenerateConnectionID() (quic.ConnectionID, error) {
	b := make([]byte, 12)
	copy(b, p)
	rand.Read(b[len(p):])
	return quic.ConnectionIDFromBytes(b), nil
}

func (p fixedPrefix) ConnectionIDLen() int { return 12 }

// The relay learns the prefix of a destination it never routed a flow
// to by probing it: a real quic-go listener answers the probe's Initial,
// and packets with that prefix are then taken over.
func TestProbeLearnsThePrefix(t *testing.T) {
	ctx := testkit.HangCtx(t)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDGenerator: fixedPrefix("pfx1")}
	ln, err := tr.Listen(selfSigned(t), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			conn.CloseWithError(0, "")
		}
	}()
	t.Cleanup(func() { ln.Close(); tr.Close(); <-accepted })

	dst := udp.LocalAddr().(*net.UDPAddr).AddrPort()
	h := newHarness(t, listRouter{mapRouter{"d": dst}}, nil)
	testkit.Eventually(t, "the probe's route", func() bool { return h.relay.Routes() == 1 })
	h.relay.mu.Lock()
	rt, ok := h.relay.routes["pfx1"]
	h.relay.mu.Unlock()
	if !ok || rt.dst != dst {
		t.Fatalf("route for prefix pfx1: %v %v, want %v", rt.dst, ok, dst)
	}
	if r, p := h.relay.Flows(); r+p != 0 {
		t.Fatalf("the probe left %d relayed and %d pending flows", r, p)
	}
}

// selfSigned is a server TLS config with a throwaway certificate.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"probe." + Suffix}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"other"}}
}
