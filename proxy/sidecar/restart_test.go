package sidecar_test

import (
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport"
)

// A peer sidecar that crashes (no CONNECTION_CLOSE: its socket just
// vanishes, as with kill -9) and comes back on the same address with the
// same identity answers the client's stale connection with a stateless
// reset. Nothing on that connection was processed, so the first request
// after the restart is retried on a fresh connection and succeeds, not
// answered 502.
func TestFirstRequestAfterPeerRestartSucceeds(t *testing.T) {
	m := meshtest.New(t)
	app := m.HTTPApp("echo", meshtest.H1, nil)
	serverIdentity := identitytest.Provider(t, m.CA, echoID) // same key before and after: same stateless reset key
	startPeer := func(udp *net.UDPConn, tcp net.Listener) *meshtest.Sidecar {
		return m.Start("server", meshtest.Spec{ID: echoID, Identity: serverIdentity, PacketConn: udp, TCPListener: tcp, Routes: map[string]string{"echo": app.URL("http")}})
	}
	udp, tcp := fixedMeshPort(t)
	addr := udp.LocalAddr().String()
	peer := startPeer(udp, tcp)

	client := m.Start("client", clientSpec(clientID))
	c := testkit.H1Client(t)
	get := func() (int, string) {
		t.Helper()
		resp, err := c.Get("http://" + client.Bind("echo") + "/")
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
	// The restarted sidecar binds the TCP port itself, as in production.
	again, err := net.ListenUDP("udp", udp.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatalf("binding %s again: %v", addr, err)
	}
	startPeer(again, nil)

	if code, body := get(); code != http.StatusOK {
		t.Fatalf("first request after the peer restarted: %d %s", code, body)
	}
}

// fixedMeshPort binds a mesh port pair (UDP and TCP, same number) the
// way a deployment has one: a fixed number outside the kernel's
// ephemeral range, so that it can be bound again after a restart. A port
// from the ephemeral range (what binding port 0 gives) cannot: any
// process's outgoing TCP connection may be given that number as its
// local port while the sidecar is down, and a listener cannot bind a
// port a connected socket holds, SO_REUSEADDR or not (it failed once,
// "address already in use", on a busy machine). Below the range only an
// explicit bind takes a port, so a number that binds now is ours.
func fixedMeshPort(t *testing.T) (*net.UDPConn, net.Listener) {
	t.Helper()
	lo := 32768 // Linux's default ip_local_port_range starts here
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	if lo <= 2048 {
		t.Skipf("no port numbers below the ephemeral range (it starts at %d)", lo)
	}
	var errs []error
	for range 50 {
		port := lo/2 + rand.IntN(lo-lo/2)
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tcp, err := net.Listen("tcp", udp.LocalAddr().String())
		if err != nil {
			udp.Close()
			errs = append(errs, err)
			continue
		}
		return udp, tcp
	}
	t.Fatalf("no free port pair below the ephemeral range: %v", errors.Join(errs...))
	return nil, nil
}

// During a partition every request fails the same way; the sidecar logs
// that once per service (or peer) and reason per interval, not once per
// request.
func TestPartitionFailuresLoggedOncePerInterval(t *testing.T) {
	m := meshtest.New(t)
	// A TCP port, so the same UDP port is most likely free: nobody serves
	// QUIC there.
	dead := m.DownApp("dead").Addr
	m.Resolve("echo", discovery.Endpoint{Addr: dead, Identity: echoID})
	var logs testkit.LogBuffer
	client := m.Start("client", meshtest.Spec{
		ID:     clientID,
		Binds:  []meshtest.Bind{{Service: "echo"}},
		Limits: transport.Limits{HandshakeTimeout: 200 * time.Millisecond},
		Logger: logs.Logger(slog.LevelWarn),
	})
	c := testkit.H1Client(t)
	const requests = 10
	start := time.Now()
	for range requests {
		resp, err := c.Get("http://" + client.Bind("echo") + "/")
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
	// In auto mode (the default) each transport's pool logs its own
	// failed dials, each rate-limited: up to one line per interval per
	// transport.
	for _, c := range []struct {
		msg     string
		allowed int
	}{{"http route failed", allowed}, {"peer dial failed", 2 * allowed}} {
		if n := len(logs.Lines(c.msg)); n < 1 || n > c.allowed {
			t.Errorf("%d %q lines for %d failed requests, want 1 to %d", n, c.msg, requests, c.allowed)
		}
	}
}
