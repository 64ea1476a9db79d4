package telemetry

import "github.com/prometheus/client_golang/prometheus"

// The transparent path's metrics: what each intercepted outbound
// connection turned out to be, and which inbound connections came from
// the mesh or from plain (non-mesh) clients. Their labels take a few
// fixed values each, so they need no limiter.

// Kinds of intercepted outbound connections (TransparentOutbound).
const (
	TransparentService       = "service"        // a service's virtual IP:port
	TransparentEndpoint      = "endpoint"       // a mesh endpoint's pod IP:port
	TransparentPassthrough   = "passthrough"    // unknown: sent on directly as plain TCP
	TransparentAmbiguous     = "ambiguous"      // refused: discovery data conflicts
	TransparentNotRedirected = "not_redirected" // refused: no original destination
	TransparentUnsynced      = "unsynced"       // refused: discovery never synced in time
)

// Sources and results of inbound connections (InboundConn).
const (
	SourceMesh      = "mesh"  // a peer sidecar's tunnel or request carrying a destination port
	SourcePlain     = "plain" // plain TCP from a client outside the mesh
	ResultDelivered = "delivered"
	ResultRefused   = "refused"
)

type transparentMetrics struct {
	outbound *prometheus.CounterVec
	inbound  *prometheus.CounterVec
}

func newTransparentMetrics(reg prometheus.Registerer) transparentMetrics {
	t := transparentMetrics{
		outbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quicmesh_transparent_outbound_total",
			Help: "Connections the transparent outbound listener accepted, by what their original destination was (service, endpoint, passthrough, ambiguous, not_redirected, unsynced).",
		}, []string{"kind"}),
		inbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quicmesh_inbound_connections_total",
			Help: "Inbound connections to the app's ports by source (mesh: a peer sidecar's tunnel or request naming a port; plain: TCP from outside the mesh) and result (delivered, refused).",
		}, []string{"source", "result"}),
	}
	reg.MustRegister(t.outbound, t.inbound)
	return t
}

// TransparentOutbound counts one intercepted outbound connection of kind
// (a Transparent* constant).
func (m *Metrics) TransparentOutbound(kind string) {
	if m == nil {
		return
	}
	m.transparent.outbound.WithLabelValues(kind).Inc()
}

// InboundConn counts one inbound connection (or mesh tunnel or request
// naming a port) by source and result (the Source* and Result*
// constants).
func (m *Metrics) InboundConn(source, result string) {
	if m == nil {
		return
	}
	m.transparent.inbound.WithLabelValues(source, result).Inc()
}
