package gateway

import (
	"net"
	"testing"
)

// One client IP address flooding Initials takes at most MaxPendingPerIP
// pending places: another address still starts its connections, and a
// place is given back when a flow completes or is dropped.
func TestPendingFlowsPerIP(t *testing.T) {
	a := newUpstream(t)
	h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) { c.MaxPendingPerIP = 2; c.MaxPendingFlows = 10 })
	from := func(ip net.IP) *net.UDPConn {
		t.Helper()
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: ip}, h.relay.Addr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	flooder, other := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)
	f1, f2, f3 := from(flooder), from(flooder), from(flooder)
	h.send(f1, initial("SNI=a;MORE"))
	h.send(f2, initial("SNI=a;MORE"))
	h.waitFlows(0, 2)
	h.send(f3, initial("SNI=a;MORE"))
	h.waitDrops(DropPendingPerIP, 1)
	h.waitFlows(0, 2)

	o := from(other)
	h.send(o, initial("SNI=a;"))
	if got := h.recv(o); got == "" {
		t.Fatal("empty answer through the relay")
	}
	h.waitFlows(1, 2)

	// f1 completes: its place is free for f3.
	h.send(f1, initial("end"))
	h.recv(f1)
	h.waitFlows(2, 1)
	h.send(f3, initial("SNI=a;MORE"))
	h.waitFlows(2, 2)
	if n := h.drops(DropPendingPerIP); n != 1 {
		t.Fatalf("%v pending_per_ip drops, want 1", n)
	}
}
