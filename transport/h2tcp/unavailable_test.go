package h2tcp

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Unavailable is what the balancer skips endpoints by (through
// fallback.Peers): as over QUIC (transport.TestPoolUnavailable) it must
// be true whenever Get would fail at once, so that requests go to other
// endpoints instead of failing, and during the back-off of a peer that
// answered (refused, draining), which Get probes but the balancer should
// avoid while others remain. It used to be false whenever a dial was in
// flight: a peer that had not answered, being probed after its back-off,
// was picked and failed at once. A connection that received GOAWAY is
// TestGoAwayDrainsPeer's.
func TestPoolUnavailable(t *testing.T) {
	const addr = "192.0.2.1:443"
	want := identity.MustParseID(serverID)
	now := time.Unix(1_000_000, 0)
	inBackoff := now.Add(-transport.Backoff(1) / 2)
	backoffOver := now.Add(-transport.Backoff(1) * 2)
	errSilent := errors.New("no answer")
	tests := []struct {
		name    string
		record  func(*transport.PeerBackoff) // nil: no failure recorded
		dialing bool
		want    bool
		// get is what Get does (with its context already done):
		// "fails" at once with ErrPeerUnavailable, "waits" for the dial
		// in flight, "" not checked (it would start a dial).
		get string
	}{
		{name: "unknown peer", want: false},
		{name: "first dial in flight", dialing: true, want: false, get: "waits"},
		{name: "silent, in back-off", record: func(b *transport.PeerBackoff) { b.Fail(errSilent, inBackoff, false) }, want: true, get: "fails"},
		{name: "silent, in back-off, dial in flight", record: func(b *transport.PeerBackoff) { b.Fail(errSilent, inBackoff, false) }, dialing: true, want: true, get: "fails"},
		{name: "silent, back-off over, probe in flight", record: func(b *transport.PeerBackoff) { b.Fail(errSilent, backoffOver, false) }, dialing: true, want: true, get: "fails"},
		{name: "silent, back-off over", record: func(b *transport.PeerBackoff) { b.Fail(errSilent, backoffOver, false) }, want: false},
		{name: "refused, in back-off", record: func(b *transport.PeerBackoff) { b.Fail(errSilent, inBackoff, true) }, want: true},
		{name: "draining, in back-off, probe in flight", record: func(b *transport.PeerBackoff) { b.Drain(errDraining, inBackoff) }, dialing: true, want: true, get: "waits"},
		{name: "draining, back-off over, probe in flight", record: func(b *transport.PeerBackoff) { b.Drain(errDraining, backoffOver) }, dialing: true, want: false, get: "waits"},
		{name: "draining, back-off over", record: func(b *transport.PeerBackoff) { b.Drain(errDraining, backoffOver) }, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Pool{cfg: Config{Now: func() time.Time { return now }}, peers: make(map[peerKey]*peerState)}
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
				if !errors.Is(err, meshcode.ErrPeerUnavailable) {
					t.Errorf("Get: %v, want ErrPeerUnavailable at once", err)
				}
			case "waits":
				if errors.Is(err, meshcode.ErrPeerUnavailable) || !errors.Is(err, context.Canceled) {
					t.Errorf("Get: %v, want it to wait for the dial in flight (context canceled)", err)
				}
			}
		})
	}
}

// A dial the peer's host refuses (nothing listens on the port: a
// sidecar restarting, or gone) is no live peer: Get fails, nothing is
// pooled, the failure is reported as refused, and the peer is
// Unavailable during its back-off (probed again after it, as a
// restarted peer answers at once).
func TestRefusedDialIsNotAlive(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := tcp.Addr().String()
	tcp.Close()
	ca := identitytest.NewCA(t, "test.local")
	pool, err := NewPool(Config{Identity: identitytest.Provider(t, ca, clientID)})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	failures := make(chan transport.PeerFailure, 1)
	pool.OnPeerFailure(func(f transport.PeerFailure) { failures <- f })
	want := identity.MustParseID(serverID)
	if _, err := pool.Get(testkit.HangCtx(t), addr, want); !errors.Is(err, meshcode.ErrPeerUnavailable) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Get of a refusing peer: %v, want ErrPeerUnavailable wrapping ECONNREFUSED", err)
	}
	if f := <-failures; f.Reason != transport.ReasonRefused {
		t.Errorf("failure reported as %q, want %q", f.Reason, transport.ReasonRefused)
	}
	if pool.Len() != 0 {
		t.Error("a connection is pooled for a peer that refused the dial")
	}
	if !pool.Unavailable(addr, want) {
		t.Error("a peer that just refused the dial is not Unavailable")
	}
}
