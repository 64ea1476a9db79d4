package telemetry

import "github.com/prometheus/client_golang/prometheus"

// handshakeAdmission are the inbound listener's handshake admission
// metrics (see transport's handshake gate).
type handshakeAdmission struct {
	inProgress prometheus.Gauge
	retries    prometheus.Counter
}

func newHandshakeAdmission(reg prometheus.Registerer) handshakeAdmission {
	h := handshakeAdmission{
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quicmesh_handshakes_in_progress",
			Help: "Inbound QUIC handshakes in progress: connections created for a client that has not yet been accepted.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quicmesh_handshake_retries_total",
			Help: "Inbound connection attempts answered with a QUIC Retry to validate the client's source address.",
		}),
	}
	reg.MustRegister(h.inProgress, h.retries)
	return h
}

// HandshakeStarted counts one inbound handshake in progress until the
// returned function is called (exactly once).
func (m *Metrics) HandshakeStarted() (done func()) {
	if m == nil {
		return func() {}
	}
	m.admission.inProgress.Inc()
	return m.admission.inProgress.Dec
}

// HandshakeRetried counts one Retry sent to validate a source address.
func (m *Metrics) HandshakeRetried() {
	if m == nil {
		return
	}
	m.admission.retries.Inc()
}

// Handshakes is m as the observer of a transport's handshakes (it
// implements transport.Observer; nil m records nothing).
func (m *Metrics) Handshakes() Handshakes { return Handshakes{m} }

// Handshakes records a transport's handshake events in Metrics.
type Handshakes struct{ m *Metrics }

func (h Handshakes) HandshakeStarted() (end func()) { return h.m.HandshakeStarted() }
func (h Handshakes) HandshakeRetried()              { h.m.HandshakeRetried() }

// HandshakeFailed counts a failed handshake: one of our dials (dial) is
// outbound, one a peer started inbound.
func (h Handshakes) HandshakeFailed(dial bool, reason string) {
	dir := Inbound
	if dial {
		dir = Outbound
	}
	h.m.HandshakeFailed(dir, reason)
}
