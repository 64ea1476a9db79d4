package telemetry

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// transportMetrics are the per-peer transport choice's metrics (issue 13):
// live mesh connections by transport, fallbacks to TCP and QUIC
// re-probes.
type transportMetrics struct {
	fallbacks prometheus.Counter
	reprobes  *prometheus.CounterVec
	conns     *connCollector
}

func newTransportMetrics(reg prometheus.Registerer) transportMetrics {
	t := transportMetrics{
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quicmesh_transport_fallbacks_total",
			Help: "Peers marked QUIC-blocked (QUIC dial failed while TCP worked) and moved to the TCP transport.",
		}),
		reprobes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quicmesh_transport_reprobes_total",
			Help: `Background QUIC probes of QUIC-blocked peers, by result ("ok": the peer moved back to QUIC).`,
		}, []string{"result"}),
		conns: &connCollector{desc: prometheus.NewDesc("quicmesh_mesh_connections",
			"Live connections between sidecars, by direction and transport (quic, tcp).",
			[]string{"direction", "transport"}, nil)},
	}
	reg.MustRegister(t.fallbacks, t.reprobes, t.conns)
	return t
}

// FellBack counts a peer moved from QUIC to TCP.
func (m *Metrics) FellBack() {
	if m != nil {
		m.transport.fallbacks.Inc()
	}
}

// Reprobed counts a QUIC re-probe of a blocked peer.
func (m *Metrics) Reprobed(ok bool) {
	if m == nil {
		return
	}
	result := "failed"
	if ok {
		result = "ok"
	}
	m.transport.reprobes.WithLabelValues(result).Inc()
}

// AddConnSource adds a count of live mesh connections of one direction
// and transport, called at every scrape (it must be quick).
func (m *Metrics) AddConnSource(dir Direction, transport string, count func() int) {
	if m == nil {
		return
	}
	c := m.transport.conns
	c.mu.Lock()
	c.sources = append(c.sources, connSource{normDir(dir), transport, count})
	c.mu.Unlock()
}

type connSource struct {
	dir       Direction
	transport string
	count     func() int
}

type connCollector struct {
	desc    *prometheus.Desc
	mu      sync.Mutex
	sources []connSource
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	sources := append([]connSource(nil), c.sources...)
	c.mu.Unlock()
	type k struct {
		dir       Direction
		transport string
	}
	sums := map[k]int{}
	var order []k
	for _, s := range sources {
		key := k{s.dir, s.transport}
		if _, ok := sums[key]; !ok {
			order = append(order, key)
		}
		sums[key] += s.count()
	}
	for _, key := range order {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(sums[key]), string(key.dir), key.transport)
	}
}
