package sidecar_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// The contract for a TCP tunnel open when its server sidecar drains
// (docs/operations.md, "Graceful shutdown"): the draining sidecar says at
// once, per peer, that work is open and when it will be reset; the
// tunnel keeps carrying bytes both ways during the grace period; when the
// grace period ends the client app gets a TCP reset, never a clean end
// of stream that could pass a cut stream off as complete, and the client
// sidecar counts it as connection_closed. The grace period here ends when
// the test says so, so nothing depends on how fast the machine is.
func TestTunnelAtEndOfGrace(t *testing.T) {
	m := meshtest.New(t)
	app := m.TCPApp("echo", nil)
	var logs testkit.LogBuffer
	server := m.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"echo": app.URL("tcp")}, Logger: logs.Logger(slog.LevelInfo)})
	client := m.Start("client", meshtest.Spec{ID: clientID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "echo", Opaque: true}}})
	nc, err := net.Dial("tcp", client.Bind("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.TCPConn)
	if err := echoOnce(t, c, "before the drain"); err != nil {
		t.Fatal(err)
	}

	grace, endGrace := context.WithDeadline(context.Background(), time.Now().Add(time.Hour))
	defer endGrace()
	drained := make(chan error, 1)
	go func() { drained <- server.Shutdown(grace) }()
	const early = "draining: peer connection has requests or tunnels open; those still open at the deadline are reset"
	testkit.Eventually(t, "the drain-start notice", func() bool { return logs.Count(early) > 0 })
	if line := logs.Lines(early)[0]; !strings.Contains(line, "streams=1") || !strings.Contains(line, "peer="+clientID) || !strings.Contains(line, "deadline=") {
		t.Errorf("drain-start notice %q: want the peer, its one stream and the deadline", line)
	}
	if err := echoOnce(t, c, "during the grace period"); err != nil {
		t.Fatalf("the tunnel stopped carrying bytes during the grace period: %v", err)
	}

	endGrace()
	if err := <-drained; err == nil {
		t.Error("Shutdown reported no work cut off at the end of the grace period")
	}
	c.SetReadDeadline(testkit.HangGuard(t))
	_, err = io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client app read %v at the end of the grace period; want a reset (ECONNRESET)", err)
	}
	testkit.Eventually(t, "the client sidecar to count the tunnel's end", func() bool {
		return testkit.MetricSum(t, client.Metrics, "quicmesh_tcp_close_total", "error", "connection_closed") == 1
	})
	if logs.Count("grace period over, closing peer connection with work in flight") != 1 {
		t.Errorf("want one warning for the connection closed with work in flight; logs:\n%s", logs.String())
	}
}
