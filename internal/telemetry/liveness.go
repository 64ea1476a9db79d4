package telemetry

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// LivenessCounts is what one transport's liveness watch did since it
// started (issue 11: failure detection). Counters, read at scrape time.
type LivenessCounts struct {
	// Unresponsive and Unreachable count peers declared dead: silent for
	// the liveness timeout, or gone (ICMP port unreachable).
	Unresponsive, Unreachable uint64
	// Pings are the watch's PINGs, Probes its port-unreachable probes
	// (QUIC only), Starved the times it found this process starved of
	// CPU and started over.
	Pings, Probes, Starved uint64
}

// AddLivenessSource adds a transport's liveness counters ("quic",
// "tcp"), read at every scrape (it must be quick):
//
//	quicmesh_peer_liveness_failures_total{transport,reason}  counter (scrape time)
//	quicmesh_peer_liveness_pings_total{transport}            counter (scrape time)
//	quicmesh_peer_liveness_probes_total{transport}           counter (scrape time)
//	quicmesh_peer_liveness_starved_total{transport}          counter (scrape time)
//
// reason is "unresponsive" (silent) or "unreachable" (port unreachable).
func (m *Metrics) AddLivenessSource(transport string, src func() LivenessCounts) {
	if m == nil || src == nil {
		return
	}
	c := m.liveness
	c.mu.Lock()
	c.sources = append(c.sources, livenessSource{transport, src})
	c.mu.Unlock()
}

type livenessSource struct {
	transport string
	counts    func() LivenessCounts
}

type livenessCollector struct {
	mu                               sync.Mutex
	sources                          []livenessSource
	failures, pings, probes, starved *prometheus.Desc
}

func newLivenessCollector(reg prometheus.Registerer) *livenessCollector {
	c := &livenessCollector{
		failures: prometheus.NewDesc("quicmesh_peer_liveness_failures_total",
			"Connections to peers the liveness watch declared dead, by transport and reason (unresponsive: silent for the liveness timeout; unreachable: ICMP port unreachable).",
			[]string{"transport", "reason"}, nil),
		pings: prometheus.NewDesc("quicmesh_peer_liveness_pings_total",
			"PINGs the liveness watch sent to silent peers.", []string{"transport"}, nil),
		probes: prometheus.NewDesc("quicmesh_peer_liveness_probes_total",
			"Port-unreachable probes the liveness watch sent to silent peers.", []string{"transport"}, nil),
		starved: prometheus.NewDesc("quicmesh_peer_liveness_starved_total",
			"Times the liveness watch found this process starved of CPU and started over.", []string{"transport"}, nil),
	}
	reg.MustRegister(c)
	return c
}

func (c *livenessCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.failures
	ch <- c.pings
	ch <- c.probes
	ch <- c.starved
}

func (c *livenessCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	sources := append([]livenessSource(nil), c.sources...)
	c.mu.Unlock()
	for _, s := range sources {
		n := s.counts()
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(n.Unresponsive), s.transport, "unresponsive")
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(n.Unreachable), s.transport, "unreachable")
		ch <- prometheus.MustNewConstMetric(c.pings, prometheus.CounterValue, float64(n.Pings), s.transport)
		ch <- prometheus.MustNewConstMetric(c.probes, prometheus.CounterValue, float64(n.Probes), s.transport)
		ch <- prometheus.MustNewConstMetric(c.starved, prometheus.CounterValue, float64(n.Starved), s.transport)
	}
}
