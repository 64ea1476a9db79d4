package h2tcp

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// A frozen peer (SIGSTOP): the kernel completes the TCP connect, the
// process never answers the TLS handshake. The dial fails within the
// dial timeout, as a QUIC dial to a silent peer does, not after the whole
// handshake timeout, reason timeout (a path failure for the fallback
// policy).
func TestDialToFrozenPeerFailsWithinDialTimeout(t *testing.T) {
	ca := identitytest.NewCA(t, "test.local")
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var accepted []net.Conn
	wg.Go(func() {
		for {
			c, err := tcp.Accept() // and never a byte back
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		tcp.Close()
		wg.Wait()
		for _, c := range accepted {
			c.Close()
		}
	})
	limits := transport.Limits{DialTimeout: 500 * time.Millisecond, HandshakeTimeout: 10 * time.Second}
	pool, err := NewPool(Config{Identity: identitytest.Provider(t, ca, clientID), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	start := time.Now()
	_, err = pool.Get(testkit.HangCtx(t), tcp.Addr().String(), identity.MustParseID(serverID))
	took := time.Since(start)
	de, ok := errors.AsType[*transport.DialError](err)
	if !ok || de.Reason != transport.ReasonTimeout {
		t.Fatalf("dial to a frozen peer: %v; want a DialError with reason %q", err, transport.ReasonTimeout)
	}
	// Far below the handshake timeout; the slack is for a loaded machine.
	if took < limits.DialTimeout || took > limits.HandshakeTimeout/2 {
		t.Fatalf("dial to a frozen peer failed after %v; want about the dial timeout %v (handshake timeout %v)", took, limits.DialTimeout, limits.HandshakeTimeout)
	}
	t.Logf("dial to a frozen peer failed after %v: %v", took, err)
}
