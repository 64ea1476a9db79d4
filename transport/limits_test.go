package transport

import (
	"testing"
	"time"
)

// Stalled streams hold their initial window and return no connection
// credit, so the initial window is sized for every stream a peer may
// open to stall holding a quarter of the connection window.
func TestInitialStreamWindow(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Limits
		want uint64
	}{
		{"defaults: 64 MiB / (4 x 4096)", Limits{}, 4 << 10},
		{"fewer streams, larger window", Limits{MaxIncomingStreams: 256}, 64 << 10},
		{"capped at 512 KiB", Limits{MaxIncomingStreams: 4}, 512 << 10},
		{"at least 4 KiB", Limits{MaxIncomingStreams: 100000}, 4 << 10},
		{"never above the stream ceiling", Limits{MaxIncomingStreams: 16, StreamReceiveWindow: 64 << 10}, 64 << 10},
		{"explicit value kept", Limits{InitialStreamReceiveWindow: 32 << 10}, 32 << 10},
		{"negative stream limit", Limits{MaxIncomingStreams: -1}, 512 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.in.withDefaults()
			if l.InitialStreamReceiveWindow != tc.want {
				t.Fatalf("initial stream window %d, want %d", l.InitialStreamReceiveWindow, tc.want)
			}
			qc := l.quicConfig()
			if qc.InitialStreamReceiveWindow != tc.want || qc.InitialConnectionReceiveWindow != l.ConnectionReceiveWindow {
				t.Fatalf("quic config: initial stream %d, initial connection %d", qc.InitialStreamReceiveWindow, qc.InitialConnectionReceiveWindow)
			}
		})
	}
}

// StalledStreams: grown streams that may stall, on top of every other
// stream stalled with its initial window, while the stalled ones hold
// less than three quarters of the connection window.
func TestStalledStreams(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Limits
		want int64
	}{
		// (48 MiB - 4111 x 4 KiB) / (8 MiB - 4 KiB) = 3.0
		{"defaults", Limits{}, 3},
		// 32 MiB: 4111 x 4 KiB leave 7.9 MiB, less than one grown stream.
		{"the former 32 MiB connection window", Limits{ConnectionReceiveWindow: 32 << 20, InitialStreamReceiveWindow: 4 << 10}, 0},
		// (48 MiB - 271 x 64 KiB) / (8 MiB - 64 KiB) = 3.9
		{"fewer streams, larger initial window", Limits{MaxIncomingStreams: 256}, 3},
		// (96 MiB - 4111 x 4 KiB) / (8 MiB - 4 KiB) = 9.9
		{"larger connection window", Limits{ConnectionReceiveWindow: 128 << 20, InitialStreamReceiveWindow: 4 << 10}, 9},
		// (48 MiB - 4111 x 4 KiB) / (2 MiB - 4 KiB) = 16.0
		{"smaller stream ceiling", Limits{StreamReceiveWindow: 2 << 20}, 16},
		{"streams that stall small use it up", Limits{MaxIncomingStreams: 100000}, 0},
		{"no growth: every stream", Limits{MaxIncomingStreams: 16, StreamReceiveWindow: 64 << 10, InitialStreamReceiveWindow: 64 << 10}, 15},
		{"no streams", Limits{MaxIncomingStreams: -1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.in.StalledStreams(); got != tc.want {
				t.Fatalf("StalledStreams() = %d, want %d", got, tc.want)
			}
		})
	}
}

// The defaults are the failure detection the mesh promises (issue 11,
// docs/design.md "Failure detection"): a peer that stops answering is
// declared dead within about a second on a quiet connection (idle
// timeout plus one keep-alive interval, since the idle timer restarts
// at the PING), a dial to a peer that does not answer fails within a
// second, and the keep-alive leaves room for several lost PINGs.
func TestFailureDetectionDefaults(t *testing.T) {
	l := Limits{}.withDefaults()
	// Fast enough to matter (it was 60 s), slow enough that a loaded
	// node's stalls do not kill live connections (1 s did: design.md).
	if quiet := l.IdleTimeout + l.KeepAlive; quiet > 7*time.Second || l.IdleTimeout < 3*time.Second {
		t.Errorf("a silent peer is declared dead after up to %v (idle %v + keep-alive %v); want 3 to 7 s", quiet, l.IdleTimeout, l.KeepAlive)
	}
	if l.DialTimeout > time.Second || l.DialTimeout > l.HandshakeTimeout {
		t.Errorf("connect timeout %v (handshake timeout %v); want at most 1 s", l.DialTimeout, l.HandshakeTimeout)
	}
	if l.KeepAlive > l.IdleTimeout/3 {
		t.Errorf("keep-alive %v leaves fewer than three PINGs per idle timeout %v", l.KeepAlive, l.IdleTimeout)
	}
	// The liveness watch: about a second, well under the idle timeout
	// (which stays the backstop), and its PINGs need DATAGRAM support.
	if l.LivenessTimeout != time.Second || l.LivenessTimeout > l.IdleTimeout/3 {
		t.Errorf("liveness timeout %v (idle timeout %v); want 1 s", l.LivenessTimeout, l.IdleTimeout)
	}
	qc := l.quicConfig()
	if !qc.EnableDatagrams {
		t.Error("DATAGRAM frames disabled: the liveness watch cannot PING")
	}
	if qc.HandshakeIdleTimeout != l.DialTimeout || qc.MaxIdleTimeout != l.IdleTimeout || qc.KeepAlivePeriod != l.KeepAlive {
		t.Errorf("quic config %v/%v/%v does not carry the limits", qc.HandshakeIdleTimeout, qc.MaxIdleTimeout, qc.KeepAlivePeriod)
	}
	if got := (Limits{DialTimeout: 5 * time.Second, HandshakeTimeout: 2 * time.Second}).withDefaults().DialTimeout; got != 2*time.Second {
		t.Errorf("connect timeout above the handshake timeout kept: %v", got)
	}
}
