package transport

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
)

// Unavailable is what the balancer skips endpoints by (proxy/outbound
// tryEndpoints): it must be true whenever Get would fail at once, so
// that requests go to other endpoints instead of failing, and during the
// back-off of a peer that answered (refused, draining), which Get probes
// but the balancer should avoid while others remain (docs/design.md,
// "One QUIC connection per peer"). It used to be false whenever a dial
// was in flight: a peer that had not answered, being probed after its
// back-off, was picked and failed at once.
func TestPoolUnavailable(t *testing.T) {
	const addr = "192.0.2.1:443"
	want := identity.MustParseID("spiffe://t.local/ns/default/sa/server")
	now := time.Unix(1_000_000, 0)
	inBackoff := now.Add(-Backoff(1) / 2)
	backoffOver := now.Add(-Backoff(1) * 2)
	errSilent := errors.New("no answer")
	tests := []struct {
		name    string
		record  func(*PeerBackoff) // nil: no failure recorded
		dialing bool
		want    bool
		// get is what Get does (with its context already done):
		// "fails" at once with ErrPeerUnavailable, "waits" for the dial
		// in flight, "" not checked (it would start a dial).
		get string
	}{
		{name: "unknown peer", want: false},
		{name: "first dial in flight", dialing: true, want: false, get: "waits"},
		{name: "silent, in back-off", record: func(b *PeerBackoff) { b.Fail(errSilent, inBackoff, false) }, want: true, get: "fails"},
		{name: "silent, in back-off, dial in flight", record: func(b *PeerBackoff) { b.Fail(errSilent, inBackoff, false) }, dialing: true, want: true, get: "fails"},
		{name: "silent, back-off over, probe in flight", record: func(b *PeerBackoff) { b.Fail(errSilent, backoffOver, false) }, dialing: true, want: true, get: "fails"},
		{name: "silent, back-off over", record: func(b *PeerBackoff) { b.Fail(errSilent, backoffOver, false) }, want: false},
		{name: "refused, in back-off", record: func(b *PeerBackoff) { b.Fail(errSilent, inBackoff, true) }, want: true},
		{name: "draining, in back-off, probe in flight", record: func(b *PeerBackoff) { b.Drain(errDraining, inBackoff) }, dialing: true, want: true, get: "waits"},
		{name: "draining, back-off over, probe in flight", record: func(b *PeerBackoff) { b.Drain(errDraining, backoffOver) }, dialing: true, want: false, get: "waits"},
		{name: "draining, back-off over", record: func(b *PeerBackoff) { b.Drain(errDraining, backoffOver) }, want: false},
		// A peer that drained and then failed without an answer (its
		// port closed while it restarts) is avoided like a silent one,
		// but Get probes it (one dial, the others wait for it) instead
		// of failing: a request with no other endpoint finds it back.
		{name: "drained, then silent, in back-off", record: func(b *PeerBackoff) { b.Drain(errDraining, inBackoff); b.Fail(errSilent, inBackoff, false) }, want: true},
		{name: "drained, then silent, in back-off, probe in flight", record: func(b *PeerBackoff) { b.Drain(errDraining, inBackoff); b.Fail(errSilent, inBackoff, false) }, dialing: true, want: true, get: "waits"},
		{name: "drained, then silent, back-off over, probe in flight", record: func(b *PeerBackoff) { b.Drain(errDraining, backoffOver); b.Fail(errSilent, backoffOver, false) }, dialing: true, want: true, get: "waits"},
		{name: "drained before the restart window, then silent, in back-off", record: func(b *PeerBackoff) {
			b.Drain(errDraining, now.Add(-RestartWindow))
			b.Fail(errSilent, inBackoff, false)
		}, want: true, get: "fails"},
		{name: "drained, then refused, in back-off, probe in flight", record: func(b *PeerBackoff) { b.Drain(errDraining, inBackoff); b.Fail(errSilent, inBackoff, true) }, dialing: true, want: true, get: "waits"},
		{name: "drained, then a working connection, then silent", record: func(b *PeerBackoff) {
			b.Drain(errDraining, inBackoff)
			b.Reset()
			b.Fail(errSilent, inBackoff, false)
		}, want: true, get: "fails"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Pool{peers: make(map[peerKey]*peerState), now: func() time.Time { return now }}
			if tt.record != nil || tt.dialing {
				st := &peerState{}
				if tt.record != nil {
					tt.record(&st.PeerBackoff)
				}
				if tt.dialing {
					st.dialing = make(chan struct{})
				}
				p.peers[peerKey{addr, want}] = st
			}
			if got := p.Unavailable(addr, want); got != tt.want {
				t.Errorf("Unavailable = %v, want %v", got, tt.want)
			}
			if tt.get == "" {
				return
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := p.Get(ctx, addr, want)
			switch tt.get {
			case "fails":
				if !errors.Is(err, ErrPeerUnavailable) {
					t.Errorf("Get: %v, want ErrPeerUnavailable at once", err)
				}
			case "waits":
				if errors.Is(err, ErrPeerUnavailable) || !errors.Is(err, context.Canceled) {
					t.Errorf("Get: %v, want it to wait for the dial in flight (context canceled)", err)
				}
			}
		})
	}
}
