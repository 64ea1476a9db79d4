package telemetry_test

import (
	"testing"

	"github.com/quicmesh/quicmesh/internal/telemetry"
)

func TestHandshakeAdmission(t *testing.T) {
	m, reg := newMetrics(t)
	done1 := m.HandshakeStarted()
	done2 := m.HandshakeStarted()
	m.HandshakeRetried()
	m.HandshakeRetried()
	m.HandshakeRetried()
	done1()
	compare(t, reg, `
quicmesh_handshakes_in_progress 1
quicmesh_handshake_retries_total 3
`, "quicmesh_handshakes_in_progress", "quicmesh_handshake_retries_total")
	done2()
	compare(t, reg, "quicmesh_handshakes_in_progress 0\n", "quicmesh_handshakes_in_progress")

	var none *telemetry.Metrics // a nil *Metrics records nothing
	none.HandshakeStarted()()
	none.HandshakeRetried()
}
