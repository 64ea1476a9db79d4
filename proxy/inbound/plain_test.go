package inbound

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// echoApp is a TCP echo on loopback; it returns its address.
func echoApp(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// plainCall sends msg through the plain server on ln and returns what
// came back.
func plainCall(ln net.Listener, msg []byte) ([]byte, error) {
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	c.(*net.TCPConn).CloseWrite()
	return io.ReadAll(c)
}

// Plain TCP from outside the mesh reaches its original destination under
// permissive, is refused under strict, and is refused without an
// original destination; the metrics count each by source and result.
// (The netns lab test, cmd/quicmesh-dev, runs the same with iptables.)
func TestPlainServer(t *testing.T) {
	app := echoApp(t)
	msg := []byte("\x00plain\n")
	tests := []struct {
		policy     PlainPolicy
		redirected bool
		delivered  bool
	}{
		{PlainPermissive, true, true},
		{"", true, true}, // the default
		{PlainStrict, true, false},
		{PlainPermissive, false, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s redirected=%v", tt.policy, tt.redirected), func(t *testing.T) {
			testkit.CheckLeaks(t)
			reg := prometheus.NewRegistry()
			s, err := NewPlain(PlainConfig{
				Policy:  tt.policy,
				Metrics: telemetry.New(reg),
				Original: func(net.Conn) (netip.AddrPort, error) {
					if !tt.redirected {
						return netip.AddrPort{}, fmt.Errorf("test: %w", origdst.ErrNotRedirected)
					}
					return app, nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()
			got, err := plainCall(ln, msg)
			ln.Close()
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
			s.Close()
			if tt.delivered && (err != nil || !bytes.Equal(got, msg)) {
				t.Errorf("got %q, %v; want the echo", got, err)
			}
			if !tt.delivered && err == nil && len(got) > 0 {
				t.Errorf("got %q; want the connection refused", got)
			}
			result := telemetry.ResultRefused
			if tt.delivered {
				result = telemetry.ResultDelivered
			}
			if n := counterWith(t, reg, "quicmesh_inbound_connections_total", map[string]string{"source": "plain", "result": result}); n != 1 {
				t.Errorf("%v plain %s counted, want 1", n, result)
			}
		})
	}
	if _, err := NewPlain(PlainConfig{Policy: "open"}); err == nil {
		t.Error("NewPlain took policy \"open\"")
	}
	if _, err := ParsePlainPolicy("strict"); err != nil {
		t.Error(err)
	}
}
