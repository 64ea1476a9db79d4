package sidecar_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// UDP between two auto-mode sidecars is dropped by iptables:
//  1. the first request succeeds over TCP (no 502), within QUIC's head
//     start plus the TCP dial;
//  2. once UDP is let through again, the peer is back on QUIC within the
//     re-probe interval;
//  3. UDP blocked again under load (HTTP/1.1 GETs, about 500/s, and 10
//     long-lived TCP tunnels): no GET fails — those caught on the dying
//     QUIC connection are re-sent over TCP when its idle timeout fires —
//     and the tunnels on the dead QUIC connection are reset by that idle
//     timeout instead of hanging; new tunnels work over TCP.
func TestNetnsBlockedUDPFallsBackToTCP(t *testing.T) {
	limits := transport.Limits{HandshakeTimeout: time.Second, IdleTimeout: 2 * time.Second}
	fb := sidecar.Fallback{RaceDelay: fallback.DefaultRaceDelay, ReprobeMin: 500 * time.Millisecond, ReprobeMax: time.Second}
	m := newNetnsMeshWith(t, func(l *netlab.Lab) (*netlab.Link, error) { return l.Pair("a", "b", "10.77.30.0/24") },
		nsOptions{mode: fallback.Auto, limits: limits, fallback: fb})
	peer, want := m.server.InboundAddr().String(), identity.MustParseID(echoID)
	web := "http://" + m.binds["web"] + "/"
	c := testkit.H1Client(t)

	// 1. Blocked from the start.
	if err := m.link.BlockUDP(true); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, err := httpStatus(c, web)
	ttfb := time.Since(start)
	if err != nil || code != http.StatusOK {
		t.Fatalf("first request with UDP blocked: %d %v, want 200 over TCP", code, err)
	}
	t.Logf("UDP blocked: first response after %v (race delay %v)", ttfb.Round(time.Millisecond), fb.RaceDelay)
	// The head start, then a TCP dial bounded by the dial timeout.
	if bound := fb.RaceDelay + limits.WithDefaults().DialTimeout; ttfb > bound {
		t.Fatalf("first request took %v with UDP blocked, want under %v", ttfb, bound)
	}
	if m.client.TCPPool().Len() != 1 {
		t.Fatalf("%d TCP connections; want the peer on TCP", m.client.TCPPool().Len())
	}
	// TCP won the race while QUIC's dial was still trying; its failure
	// (at the dial timeout) marks the peer.
	testkit.Eventually(t, "the peer marked QUIC-blocked", func() bool { return m.client.QUICBlocked(peer, want) })

	// 2. Unblocked: back on QUIC within the re-probe interval (plus a
	// handshake).
	if err := m.link.BlockUDP(false); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	testkit.Eventually(t, "the peer back on QUIC", func() bool { return !m.client.QUICBlocked(peer, want) })
	back := time.Since(start)
	t.Logf("UDP unblocked: back on QUIC after %v (re-probe interval ≤ %v)", back.Round(time.Millisecond), fb.ReprobeMax)
	if bound := fb.ReprobeMax + limits.HandshakeTimeout; back > bound {
		t.Fatalf("back on QUIC after %v, want within %v", back, bound)
	}
	if code, err := httpStatus(c, web); err != nil || code != http.StatusOK {
		t.Fatalf("request after moving back: %d %v", code, err)
	}
	if m.client.Pool().Len() != 1 {
		t.Fatal("no QUIC connection after moving back")
	}
	testkit.Eventually(t, "the TCP connection drained", func() bool { return m.client.TCPPool().Len() == 0 })

	// 3. Re-blocked under load.
	var tunnels []*net.TCPConn
	for range 10 {
		tc := m.dial(t, "echo")
		defer tc.Close()
		if got, err := exchange(tc, "hello"); err != nil || got != "hello" {
			t.Fatalf("tunnel over QUIC: %q %v", got, err)
		}
		tunnels = append(tunnels, tc)
	}
	if m.client.TCPPool().Len() != 0 {
		t.Fatal("tunnels went over TCP before the block")
	}
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	const workers, every = 10, 20 * time.Millisecond // 10 × 50/s = 500 req/s at most
	for range workers {
		wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				code, err := httpStatus(c, web)
				if err != nil || code != http.StatusOK {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, http.StatusText(code)+" "+errString(err))
					continue
				}
				ok.Add(1)
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // load on QUIC first
	if err := m.link.BlockUDP(true); err != nil {
		t.Fatal(err)
	}
	blocked := time.Now()
	// The tunnels on the now silent QUIC connection: reset once its
	// idle timeout fires, not left hanging.
	var resetAfter []time.Duration
	for _, tc := range tunnels {
		tc.SetDeadline(testkit.HangGuard(t))
		_, err := exchange(tc, "still there?")
		if err == nil {
			t.Fatal("a tunnel kept working over a QUIC path that carries no packets")
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("a tunnel hung on the dead QUIC path")
		}
		resetAfter = append(resetAfter, time.Since(blocked))
	}
	t.Logf("tunnels on the dead QUIC connection reset %v after the block (idle timeout %v)", resetAfter[len(resetAfter)-1].Round(time.Millisecond), limits.IdleTimeout)
	// Load keeps going over TCP for a while.
	testkit.Eventually(t, "the peer on TCP again", func() bool { return m.client.QUICBlocked(peer, want) })
	okAtSwitch := ok.Load()
	testkit.Eventually(t, "100 requests over TCP", func() bool { return ok.Load() >= okAtSwitch+100 })
	tc := m.dial(t, "echo")
	defer tc.Close()
	if got, err := exchange(tc, "new"); err != nil || got != "new" {
		t.Fatalf("new tunnel over TCP: %q %v", got, err)
	}
	close(stop)
	wg.Wait()
	t.Logf("re-blocked under load: %d requests ok, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d idempotent requests failed when UDP was blocked again; first: %v", failed.Load(), firstErr.Load())
	}
}

// exchange writes msg on a tunnel and reads its echo.
func exchange(c *net.TCPConn, msg string) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	n, err := io.ReadFull(c, buf)
	return string(buf[:n]), err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
