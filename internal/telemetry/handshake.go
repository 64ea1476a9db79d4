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
