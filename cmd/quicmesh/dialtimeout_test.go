package main

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/h2tcp"
)

// limits.dial_timeout reaches both dialers the sidecar uses: a dial to a
// peer that never answers (a UDP socket nobody reads; a TCP listener
// whose process never says a word, as a frozen peer) fails with reason
// timeout no sooner than the configured dial timeout, and well before the
// handshake timeout. The configured value is above the 1 s default, so
// a config key that does not reach the dialer fails the lower bound;
// timers never fire early, so that bound holds on a loaded machine.
func TestDialTimeoutFromConfig(t *testing.T) {
	o, err := mergeOptionsFrom(t, `{"limits": {"dial_timeout": "1500ms", "handshake_timeout": "8s"}}`,
		[]string{"--cert", "w.crt", "--key", "w.key", "--bundle", "b.crt"}, "")
	if err != nil {
		t.Fatal(err)
	}
	limits := o.sidecar.Limits
	if limits.DialTimeout <= transport.DefaultDialTimeout {
		t.Fatalf("configured dial timeout %v; the test needs one above the default %v", limits.DialTimeout, transport.DefaultDialTimeout)
	}
	ca := identitytest.NewCA(t, "test.local")
	prov := identitytest.Provider(t, ca, "spiffe://test.local/ns/default/sa/client")
	want := identity.MustParseID("spiffe://test.local/ns/default/sa/server")

	tests := []struct {
		name string
		dial func(t *testing.T) error
	}{
		{"quic", func(t *testing.T) error {
			silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // bound, never read
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { silent.Close() })
			ep, err := transport.NewDialer("127.0.0.1:0", transport.Config{Identity: prov, Limits: limits})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ep.Close() })
			_, err = ep.Dial(testkit.HangCtx(t), silent.LocalAddr().String(), want)
			return err
		}},
		{"tcp", func(t *testing.T) error {
			addr := frozenTCPPeer(t)
			pool, err := h2tcp.NewPool(h2tcp.Config{Identity: prov, Limits: limits})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pool.Close() })
			_, err = pool.Get(testkit.HangCtx(t), addr, want)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := tt.dial(t)
			took := time.Since(start)
			de, ok := errors.AsType[*transport.DialError](err)
			if !ok || de.Reason != transport.ReasonTimeout {
				t.Fatalf("dial to a silent peer: %v; want a DialError with reason %q", err, transport.ReasonTimeout)
			}
			if took < limits.DialTimeout || took >= limits.HandshakeTimeout {
				t.Fatalf("dial to a silent peer failed after %v; want the configured dial timeout %v, not sooner, and before the handshake timeout %v",
					took, limits.DialTimeout, limits.HandshakeTimeout)
			}
			t.Logf("dial failed after %v (dial timeout %v): %v", took, limits.DialTimeout, err)
		})
	}
}

// frozenTCPPeer is a TCP listener on loopback that accepts and never
// sends a byte, as a peer whose process is frozen looks to a dialler
// once the kernel has completed the connect.
func frozenTCPPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testkit.SilentTCP(t, ln)
	return ln.Addr().String()
}
