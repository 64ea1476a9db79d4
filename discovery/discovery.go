// Package discovery tells a sidecar where a service's peers are. A Resolver
// watches a service name and yields its endpoint set as a stream of
// updates; implementations (a static file, DNS, a control plane) live in
// sub-packages.
//
// # The model
//
// A Service is what a cluster has: a name (name.namespace in a cluster,
// any lower-case DNS-style name elsewhere), optional virtual IPs and ports,
// and endpoints. An Endpoint is one peer sidecar: the mesh (QUIC) address
// to dial, the SPIFFE ID it must prove, a weight and zone for balancing,
// and, where the source knows them, the workload's own pod IP and ports and
// whether it is ready.
//
// Every field added after the first version has a zero value that means
// the old behaviour, so sources that know less (DNS, old static files)
// need not set it: no pod IP, no virtual IPs, ready.
//
// # Readiness
//
// A not-ready endpoint is still listed (Add/Remove keep matching it by
// Key) but must not receive balanced traffic. Cache.Endpoints returns the
// ready endpoints only, and Ready filters any other set, so a balancer
// fed by either never picks one. The Index does return a not-ready
// endpoint for its pod IP: an app that dials a pod directly chose that pod.
//
// # The transparent path
//
// An Index maps an original destination (IP:port) to a service (by
// virtual IP and service port) or an endpoint (by pod IP and port).
// Resolvers that know addresses implement Catalog, which feeds an Index
// through Index.Follow; a resolver that does not (DNS) leaves the Index
// empty, and every destination is unknown.
package discovery

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
)

var (
	// ErrUnknownService means the resolver has no such service.
	ErrUnknownService = errors.New("discovery: unknown service")
	// ErrNoEndpoints means the service exists but has no endpoints now.
	ErrNoEndpoints = errors.New("discovery: no endpoints")
	// ErrClosed is returned by Watch.Next after Close.
	ErrClosed = errors.New("discovery: watch closed")
)

// Endpoint is one peer proxy serving a service.
type Endpoint struct {
	// Addr is the peer proxy's QUIC (UDP) address, host:port: for an
	// endpoint of another cluster, its gateway's address.
	Addr string `json:"addr"`
	// ServerName is the TLS server name (SNI) to send when dialing Addr.
	// Empty for a sidecar dialled directly; set for an endpoint reached
	// through a gateway, which routes the connection by it without
	// terminating TLS (docs/design.md, "Gateway: bridging clusters").
	// Identity is still what the peer behind the gateway must prove.
	ServerName string `json:"server_name,omitempty"`
	// Identity is the SPIFFE ID the peer must present; the connection is
	// refused during the handshake if it presents any other.
	Identity string `json:"identity"`
	// Weight for load balancing; 0 means the default of 1.
	Weight uint32 `json:"weight,omitempty"`
	// Zone is an optional locality label.
	Zone string `json:"zone,omitempty"`
	// Metadata is free-form and passed through untouched.
	Metadata map[string]string `json:"metadata,omitempty"`
	// PodIP is the workload's own address (the pod IP in a cluster): what
	// an app dials when it addresses this peer directly, and what an Index
	// maps back to this endpoint. Invalid (zero) if the source does not
	// know it.
	PodIP netip.Addr `json:"pod_ip,omitzero"`
	// Ports are the workload's ports (a pod's container ports) that reach
	// it through the mesh. Empty means every port of PodIP.
	Ports []uint16 `json:"ports,omitempty"`
	// NotReady marks an endpoint that exists but must get no balanced
	// traffic (a pod starting, failing its readiness probe or
	// terminating). Inverted so that the zero value, which every source
	// without a notion of readiness produces, means ready.
	NotReady bool `json:"not_ready,omitempty"`
}

// Key identifies an endpoint within a set; two endpoints with the same key
// are the same peer. Endpoints behind one gateway share Addr and differ
// by ServerName, so the key is built from DialAddr.
func (e Endpoint) Key() string { return e.DialAddr() + "|" + e.Identity }

// DialAddr is the peer address a transport dials: Addr, or
// "ServerName@Addr" for an endpoint reached through a gateway. It is what
// the proxy hands the transport's pool, so the pool keeps one connection
// per (address, server name, identity) without knowing about gateways;
// SplitDialAddr takes it apart again.
func (e Endpoint) DialAddr() string {
	if e.ServerName == "" {
		return e.Addr
	}
	return e.ServerName + "@" + e.Addr
}

// SplitDialAddr splits a peer address made by DialAddr into the address
// to send packets to and the server name to send ("" when there is none).
// A server name is a host name and never contains '@'; an address may
// (an IPv6 zone), so the split is at the first '@'.
func SplitDialAddr(peer string) (addr, serverName string) {
	if name, rest, ok := strings.Cut(peer, "@"); ok {
		return rest, name
	}
	return peer, ""
}

// Ready reports whether the endpoint may receive balanced traffic.
func (e Endpoint) Ready() bool { return !e.NotReady }

// Equal reports whether e and o are the same in every field, so that a
// change of any of them (readiness included) is a change of the set.
func (e Endpoint) Equal(o Endpoint) bool {
	if e.Addr != o.Addr || e.ServerName != o.ServerName || e.Identity != o.Identity || e.Weight != o.Weight || e.Zone != o.Zone ||
		e.PodIP != o.PodIP || e.NotReady != o.NotReady || !slices.Equal(e.Ports, o.Ports) ||
		len(e.Metadata) != len(o.Metadata) {
		return false
	}
	for k, v := range e.Metadata {
		if w, ok := o.Metadata[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Ready returns the ready endpoints of eps, in order. When all are ready
// it returns eps itself, without allocating; otherwise a new slice. A
// balancer that is handed eps from anywhere but Cache.Endpoints (which
// already filters) must pick from Ready(eps).
func Ready(eps []Endpoint) []Endpoint {
	n := 0
	for _, e := range eps {
		if e.Ready() {
			n++
		}
	}
	if n == len(eps) {
		return eps
	}
	out := make([]Endpoint, 0, n)
	for _, e := range eps {
		if e.Ready() {
			out = append(out, e)
		}
	}
	return out
}

// Local reports whether the endpoint is of this cluster: one dialled
// directly, not through another cluster's gateway (no ServerName).
func (e Endpoint) Local() bool { return e.ServerName == "" }

// PreferLocal is the federation rule: a service may list endpoints of
// this cluster and endpoints of other clusters (reached through their
// gateways) under one name; the remote ones get traffic only while no
// local one is listed. It returns the local endpoints of eps if there is
// one, else eps, without allocating when eps is all local or all remote.
// Apply it to ready endpoints (Ready first): a local endpoint that is not
// ready does not hold traffic back from the remote ones.
func PreferLocal(eps []Endpoint) []Endpoint {
	local := 0
	for _, e := range eps {
		if e.Local() {
			local++
		}
	}
	if local == 0 || local == len(eps) {
		return eps
	}
	out := make([]Endpoint, 0, local)
	for _, e := range eps {
		if e.Local() {
			out = append(out, e)
		}
	}
	return out
}

// Service is one service with everything a cluster knows about it.
type Service struct {
	// Name is name.namespace for a cluster service (orders.shop), or any
	// lower-case DNS-style name; it is what Resolver.Resolve takes.
	Name string `json:"name"`
	// VirtualIPs are the service's cluster IPs; an app that dials one of
	// them at one of Ports means this service. None for a service that
	// is only reached by name (or a source without them, such as DNS).
	VirtualIPs []netip.Addr `json:"virtual_ips,omitempty"`
	// Ports are the service's ports on its virtual IPs.
	Ports []ServicePort `json:"ports,omitempty"`
	// Endpoints are the peers serving it, ready or not.
	Endpoints []Endpoint `json:"endpoints"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	// Name is optional (a Kubernetes port name such as "http").
	Name string `json:"name,omitempty"`
	// Port is the port on the virtual IPs that apps dial.
	Port uint16 `json:"port"`
	// TargetPort is the port on the endpoints' workloads; 0 means Port.
	TargetPort uint16 `json:"target_port,omitempty"`
}

// Target returns the port on the endpoints that Port maps to.
func (p ServicePort) Target() uint16 {
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

// Clone deep-copies s.
func (s Service) Clone() Service {
	s.VirtualIPs = slices.Clone(s.VirtualIPs)
	s.Ports = slices.Clone(s.Ports)
	s.Endpoints = CloneEndpoints(s.Endpoints)
	return s
}

// UpdateKind says how an Update changes the endpoint set.
type UpdateKind int

const (
	// Reset replaces the whole set (possibly with an empty one).
	Reset UpdateKind = iota
	// Add adds or replaces endpoints (matched by Key).
	Add
	// Remove removes endpoints (matched by Key).
	Remove
)

func (k UpdateKind) String() string {
	switch k {
	case Reset:
		return "reset"
	case Add:
		return "add"
	case Remove:
		return "remove"
	}
	return "unknown"
}

// Update is one change to a service's endpoint set.
type Update struct {
	Kind      UpdateKind
	Endpoints []Endpoint
}

// Resolver starts watches on service names.
type Resolver interface {
	// Resolve starts watching name. It returns ErrUnknownService (wrapped)
	// if the name is not known at all.
	Resolve(ctx context.Context, name string) (Watch, error)
}

// Watch yields the updates of one service. The first update is always a
// Reset carrying the complete current set.
type Watch interface {
	// Next blocks until the next update, ctx is done or the watch is
	// closed (ErrClosed).
	Next(ctx context.Context) (Update, error)
	Close() error
}
