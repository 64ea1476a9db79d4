package telemetry_test

import (
	"sync/atomic"
	"testing"

	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// The liveness counters are read from their sources at every scrape, per
// transport; a later scrape sees what the sources counted since.
func TestLivenessMetrics(t *testing.T) {
	m, reg := newMetrics(t)
	var quicDead atomic.Uint64
	m.AddLivenessSource("quic", func() telemetry.LivenessCounts {
		return telemetry.LivenessCounts{Unresponsive: quicDead.Load(), Unreachable: 2, Pings: 7, Probes: 3, Starved: 1}
	})
	m.AddLivenessSource("tcp", func() telemetry.LivenessCounts { return telemetry.LivenessCounts{Unresponsive: 4, Pings: 9} })
	names := []string{"quicmesh_peer_liveness_failures_total", "quicmesh_peer_liveness_pings_total", "quicmesh_peer_liveness_probes_total", "quicmesh_peer_liveness_starved_total"}
	for _, tt := range []struct {
		quicDead uint64
		want     string
	}{
		{0, `
quicmesh_peer_liveness_failures_total{reason="unreachable",transport="quic"} 2
quicmesh_peer_liveness_failures_total{reason="unresponsive",transport="quic"} 0
quicmesh_peer_liveness_failures_total{reason="unreachable",transport="tcp"} 0
quicmesh_peer_liveness_failures_total{reason="unresponsive",transport="tcp"} 4
quicmesh_peer_liveness_pings_total{transport="quic"} 7
quicmesh_peer_liveness_pings_total{transport="tcp"} 9
quicmesh_peer_liveness_probes_total{transport="quic"} 3
quicmesh_peer_liveness_probes_total{transport="tcp"} 0
quicmesh_peer_liveness_starved_total{transport="quic"} 1
quicmesh_peer_liveness_starved_total{transport="tcp"} 0
`},
		{5, `
quicmesh_peer_liveness_failures_total{reason="unreachable",transport="quic"} 2
quicmesh_peer_liveness_failures_total{reason="unresponsive",transport="quic"} 5
quicmesh_peer_liveness_failures_total{reason="unreachable",transport="tcp"} 0
quicmesh_peer_liveness_failures_total{reason="unresponsive",transport="tcp"} 4
quicmesh_peer_liveness_pings_total{transport="quic"} 7
quicmesh_peer_liveness_pings_total{transport="tcp"} 9
quicmesh_peer_liveness_probes_total{transport="quic"} 3
quicmesh_peer_liveness_probes_total{transport="tcp"} 0
quicmesh_peer_liveness_starved_total{transport="quic"} 1
quicmesh_peer_liveness_starved_total{transport="tcp"} 0
`},
	} {
		quicDead.Store(tt.quicDead)
		compare(t, reg, tt.want, names...)
	}
	var nilMetrics *telemetry.Metrics
	nilMetrics.AddLivenessSource("quic", func() telemetry.LivenessCounts { return telemetry.LivenessCounts{} })
}
