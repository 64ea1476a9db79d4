package transport

import "testing"

// Stalled streams hold their initial window and return no connection
// credit, so the initial window is sized for every stream a peer may
// open to stall and leave half the connection window flowing.
func TestInitialStreamWindow(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Limits
		want uint64
	}{
		{"defaults: 32 MiB / (2 x 4096)", Limits{}, 4 << 10},
		{"fewer streams, larger window", Limits{MaxIncomingStreams: 256}, 64 << 10},
		{"capped at 512 KiB", Limits{MaxIncomingStreams: 4, ConnectionReceiveWindow: 64 << 20}, 512 << 10},
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
