package h2tcp

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// serveOn serves on addr until the test ends or stop is called, sending
// each connection it accepts to conns.
func serveOn(t *testing.T, ca *identity.CA, addr string, conns chan<- *ServerConn) (bound string, stop func()) {
	t.Helper()
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(tcp, Config{Identity: identitytest.Provider(t, ca, serverID), Limits: transport.Limits{DialTimeout: pairDialTimeout, HandshakeTimeout: pairDialTimeout}}, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			if conns != nil {
				conns <- c
			}
			go c.Serve(http.NotFoundHandler(), func(*ServerStream, string) {})
		}
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			ln.Close()
			<-served
		}
	}
	t.Cleanup(stop)
	return tcp.Addr().String(), stop
}

// A peer that drained and is restarting is probed during its back-off
// rather than failed at once (transport.PeerBackoff.FailsFast), as by the
// QUIC pool (transport's TestRestartedPeerProbedDuringBackoff): a Get
// finds it as soon as it listens again, and a Get that found it down
// fails marked meshcode.ErrPeerRestarting. Down is silent here (its
// address accepts and never answers: the dial times out), the failure a
// peer that did not say goodbye fails at once for during its back-off.
// (A refused connect is the host's answer: that peer is probed either
// way.)
func TestRestartedPeerProbedDuringBackoff(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "test.local")
	id := identity.MustParseID(serverID)
	for _, tt := range []struct {
		name    string
		drained bool // the peer said goodbye (GOAWAY) before it went
	}{
		{"drained, then restarted", true},
		{"never reached, then started", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Frozen: no back-off or restart window expires during the test.
			now := time.Now()
			lim := transport.Limits{DialTimeout: 2 * time.Second, HandshakeTimeout: pairDialTimeout}
			pool, err := NewPool(Config{Identity: identitytest.Provider(t, ca, clientID), Now: func() time.Time { return now }, Limits: lim})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pool.Close() })
			conns := make(chan *ServerConn, 1)
			addr, stop := serveOn(t, ca, "127.0.0.1:0", conns)
			if tt.drained {
				first, err := pool.Get(testkit.HangCtx(t), addr, id)
				if err != nil {
					t.Fatal(err)
				}
				sc := <-conns
				if err := sc.GoAway(testkit.HangCtx(t)); err != nil {
					t.Fatal(err)
				}
				testkit.Eventually(t, "the GOAWAY to arrive", func() bool { return !first.Alive() })
				sc.Close(meshcode.ConnShutdown, "drained")
				<-first.Context().Done()
			}
			stop()
			silent, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			testkit.SilentTCP(t, silent)
			_, downErr := pool.Get(testkit.HangCtx(t), addr, id)
			if de, ok := errors.AsType[*transport.DialError](downErr); !ok || de.Reason != transport.ReasonTimeout {
				t.Fatalf("Get with the peer down: %v; want a dial timeout", downErr)
			}
			if errors.Is(downErr, meshcode.ErrPeerRestarting) != tt.drained {
				t.Fatalf("Get with the peer down: %v; want it marked meshcode.ErrPeerRestarting: %v", downErr, tt.drained)
			}
			if !pool.Unavailable(addr, id) {
				t.Fatal("Unavailable = false in the back-off after a failed dial")
			}
			silent.Close()
			serveOn(t, ca, addr, nil)
			pc, err := pool.Get(testkit.HangCtx(t), addr, id)
			switch {
			case tt.drained && err != nil:
				t.Fatalf("Get after the drained peer restarted: %v; want a probe that finds it", err)
			case tt.drained && !pc.Alive():
				t.Fatal("Get returned a dead connection")
			case !tt.drained && !errors.Is(err, meshcode.ErrPeerUnavailable):
				t.Fatalf("Get during the back-off of a peer that never answered: %v, %v; want ErrPeerUnavailable at once", pc, err)
			}
		})
	}
}
