package gateway

import "github.com/prometheus/client_golang/prometheus"

// Drop reasons: the values of quicmesh_gateway_dropped_datagrams_total's
// reason label. Bounded: one per way a datagram can be refused.
const (
	// DropNotInitial: from an address with no flow, and not a client
	// Initial (too short, short header, another long-header type): what
	// garbage and packets of expired flows look like.
	DropNotInitial = "not_initial"
	// DropBadInitial: an Initial whose ClientHello could not be read.
	DropBadInitial = "bad_initial"
	// DropNoRoute: the server name names nothing this gateway exports
	// (not a gateway name, a service not exported, no such endpoint).
	DropNoRoute = "no_route"
	// DropFlowsFull: MaxFlows flows already exist.
	DropFlowsFull = "flows_full"
	// DropPendingFull: MaxPendingFlows flows are already waiting for the
	// rest of their ClientHello.
	DropPendingFull = "pending_full"
	// DropPendingPerIP: MaxPendingPerIP flows from the datagram's source
	// IP address are already waiting for the rest of their ClientHello.
	DropPendingPerIP = "pending_per_ip"
	// DropPendingBytes: a flow sent more than MaxPendingBytes before its
	// ClientHello was complete; the flow is dropped.
	DropPendingBytes = "pending_bytes"
	// DropUpstream: the datagram could not be sent on (the destination's
	// socket could not be opened, or a send failed).
	DropUpstream = "upstream_error"
)

var dropReasons = []string{DropNotInitial, DropBadInitial, DropNoRoute, DropFlowsFull, DropPendingFull, DropPendingPerIP, DropPendingBytes, DropUpstream}

// Metrics are the gateway's Prometheus metrics.
type Metrics struct {
	flows        *prometheus.GaugeVec
	flowsTotal   prometheus.Counter
	bytesToDest  prometheus.Counter
	bytesToClnt  prometheus.Counter
	drops        map[string]prometheus.Counter
	flowsPending prometheus.Gauge
	flowsRelayed prometheus.Gauge
	refusals     prometheus.Counter
	takeovers    prometheus.Counter
}

// NewMetrics registers the gateway's metrics with reg (nil: not
// registered anywhere, for tests that do not look).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	flows := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "quicmesh_gateway_flows",
		Help: "Flows (client address to destination sidecar) the gateway holds, by state: pending (waiting for the rest of the ClientHello) or relayed.",
	}, []string{"state"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_gateway_bytes_total",
		Help: "UDP payload bytes relayed, by direction (to_destination, to_client).",
	}, []string{"direction"})
	m := &Metrics{
		flows: flows,
		flowsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quicmesh_gateway_flows_routed_total",
			Help: "Flows routed to a destination since start.",
		}),
		bytesToDest:  bytes.WithLabelValues("to_destination"),
		bytesToClnt:  bytes.WithLabelValues("to_client"),
		drops:        map[string]prometheus.Counter{},
		flowsPending: flows.WithLabelValues("pending"),
		flowsRelayed: flows.WithLabelValues("relayed"),
		refusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quicmesh_gateway_refusals_total",
			Help: "Connections the gateway refused with a CONNECTION_CLOSE (CONNECTION_REFUSED) in an Initial, so that the client tries another endpoint at once: no route for the server name, or no socket to the destination.",
		}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quicmesh_gateway_takeovers_total",
			Help: "Connections taken over by their connection ID prefix (routed by another gateway, now arriving here) whose destination answered.",
		}),
	}
	dropVec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quicmesh_gateway_dropped_datagrams_total",
		Help: "Datagrams the gateway dropped, by reason.",
	}, []string{"reason"})
	for _, r := range dropReasons {
		m.drops[r] = dropVec.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(flows, m.flowsTotal, bytes, dropVec, m.refusals, m.takeovers)
	}
	return m
}
