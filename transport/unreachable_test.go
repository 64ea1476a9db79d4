package transport

import (
	"context"
	"net"
	"testing"
	"time"
)

// A probe whose context is already done returns at once, without
// waiting for an answer. The dial beside it can be refused within a
// round trip (a draining peer; the probe's datagram reached its still
// open port, so no ICMP error will come): it cancels the probe and waits
// for it. The probe used to arm its wait after registering the
// cancellation, so a cancellation that ran first was overwritten and
// the refused dial, and every caller coalesced on it, waited out the
// whole dial timeout (seen in a sidecar drain: requests of about 1.04 s
// with a healthy second endpoint). Many probes, since the cancellation
// raced with the arming: the old code lost about one in a few hundred.
func TestProbeCancelledReturnsAtOnce(t *testing.T) {
	// A silent open port: a live QUIC endpoint ignores the empty datagram.
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	addr := peer.LocalAddr().(*net.UDPAddr)
	wait := Limits{}.WithDefaults().DialTimeout
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 2000 {
		start := time.Now()
		if probeUnreachable(ctx, addr, wait) {
			t.Fatalf("probe %d of an open port found it unreachable", i)
		}
		if took := time.Since(start); took >= wait {
			t.Fatalf("probe %d with its context done took %v: it waited out its wait (%v, the dial timeout)", i, took, wait)
		}
	}
}
