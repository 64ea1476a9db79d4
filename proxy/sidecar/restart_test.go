package sidecar_test

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
)

// A peer sidecar that crashes (no CONNECTION_CLOSE: its socket just
// vanishes, as with kill -9) and comes back on the same address with the
// same identity answers the client's stale connection with a stateless
// reset. Nothing on that connection was processed, so the first request
// after the restart is retried on a fresh connection and succeeds, not
// answered 502.
func TestFirstRequestAfterPeerRestartSucceeds(t *testing.T) {
	checkLeaks(t)
	ca := identitytest.NewCA(t, "test.local")
	app := echo.StartHTTP1(listen(t))
	t.Cleanup(func() { app.Close() })
	serverIdentity := identitytest.Provider(t, ca, echoID) // same key before and after: same stateless reset key
	startPeer := func(udp *net.UDPConn) *sidecar.Sidecar {
		s, err := sidecar.Start(sidecar.Config{
			Identity:    serverIdentity,
			Resolver:    staticMap(t, nil),
			InboundAddr: udp.LocalAddr().String(),
			PacketConn:  udp,
			Routes:      inbound.Routes{"echo": "http://" + app.Addr().String()},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	bindUDP := func(addr string) *net.UDPConn {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		udp, err := net.ListenUDP("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		return udp
	}
	udp := bindUDP("127.0.0.1:0")
	addr := udp.LocalAddr().String()
	peer := startPeer(udp)

	client, _ := startClient(t, identitytest.Provider(t, ca, clientID), map[string][]discovery.Endpoint{
		"echo": {{Addr: addr, Identity: echoID}},
	})
	c := h1Client(t)
	get := func() (int, string) {
		t.Helper()
		resp, err := c.Get("http://" + client.BindAddr(0).String() + "/")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("before the restart: %d %s", code, body)
	}

	udp.Close() // crash: the socket vanishes, nothing is sent
	peer.Close()
	startPeer(bindUDP(addr))

	if code, body := get(); code != http.StatusOK {
		t.Fatalf("first request after the peer restarted: %d %s", code, body)
	}
}

// lockedBuffer collects log output written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) count(msg string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), `msg="`+msg+`"`)
}

// During a partition every request fails the same way; the sidecar logs
// that once per service (or peer) and reason per interval, not once per
// request.
func TestPartitionFailuresLoggedOncePerInterval(t *testing.T) {
	checkLeaks(t)
	ca := identitytest.NewCA(t, "test.local")
	hole := listen(t) // a TCP port, so the same UDP port is most likely free: nobody serves QUIC there
	dead := hole.Addr().String()
	hole.Close()
	var logs lockedBuffer
	client, err := sidecar.Start(sidecar.Config{
		Identity:    identitytest.Provider(t, ca, clientID),
		Resolver:    staticMap(t, map[string][]discovery.Endpoint{"echo": {{Addr: dead, Identity: echoID}}}),
		InboundAddr: "127.0.0.1:0",
		Binds:       []sidecar.Bind{{Listen: "127.0.0.1:0", Service: "echo"}},
		Limits:      transport.Limits{HandshakeTimeout: 200 * time.Millisecond},
		Logger:      slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c := h1Client(t)
	const requests = 10
	start := time.Now()
	for range requests {
		resp, err := c.Get("http://" + client.BindAddr(0).String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 500 {
			t.Fatalf("request to a partitioned peer: %d", resp.StatusCode)
		}
	}
	// However slow the machine, a working limiter logs at most one line
	// per interval; an unlimited one logs a line per request.
	allowed := 1 + int(time.Since(start)/lograte.DefaultLogInterval)
	for _, msg := range []string{"http route failed", "peer dial failed"} {
		if n := logs.count(msg); n < 1 || n > allowed {
			t.Errorf("%d %q lines for %d failed requests, want 1 to %d", n, msg, requests, allowed)
		}
	}
}
