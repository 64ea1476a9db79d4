// Package controlplane is a discovery.Resolver and discovery.Catalog over
// the quicmesh control plane's Discovery service. Each Resolve opens one
// Watch stream, whose first message is the complete set; later messages
// are changes. Endpoints carry their pod IP, ports and readiness; the
// control plane sends not-ready endpoints too, and they arrive NotReady,
// which discovery.Cache.Endpoints withholds from balancing.
//
// When a Watch stream fails, the watch returns the error and
// discovery.Cache keeps serving the last set while it re-resolves with
// back-off; the new stream starts with a complete set again, so nothing
// missed while the control plane was away lingers.
//
// WatchCatalog follows the WatchIndex stream (every service with its
// virtual IPs, ports and endpoints) for discovery.Index.Follow. It
// reconnects by itself with back-off and publishes nothing while the
// control plane is away, so the Index keeps its last table; the first
// list after a reconnect is a complete one again.
package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// Watcher is what the resolver needs of the control plane (a
// controlpb.DiscoveryClient).
type Watcher interface {
	Watch(ctx context.Context, in *controlpb.WatchRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[controlpb.EndpointUpdate], error)
	WatchIndex(ctx context.Context, in *controlpb.WatchIndexRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[controlpb.IndexUpdate], error)
}

// Options configures a Resolver; the zero value is the defaults.
type Options struct {
	// MinBackoff and MaxBackoff bound the wait between WatchIndex
	// reconnections, doubled after each failure (with jitter) and reset
	// once a stream delivers; 0 means 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives catalog stream failures; nil discards them.
	Logger *slog.Logger
}

// maxMessageBytes bounds one stream message the resolver accepts. A
// snapshot is one message: the catalog's holds every endpoint of the
// cluster, about 115 bytes each (1,149,562 bytes for 1,000 services × 10
// endpoints, docs/benchmarks.md), so gRPC's default of 4 MiB refused the
// catalog of a cluster of some 36,000 endpoints and the transparent path
// never synced. 64 MiB is room for over half a million; the control plane
// is authenticated (controlclient), so the bound is against mistakes, not
// attacks.
const maxMessageBytes = 64 << 20

// Resolver resolves NAME.NAMESPACE service names through the control plane.
type Resolver struct {
	client Watcher
	opts   Options
}

var (
	_ discovery.Resolver = (*Resolver)(nil)
	_ discovery.Catalog  = (*Resolver)(nil)
)

// New returns a Resolver over client with the default Options.
func New(client Watcher) *Resolver { return NewWithOptions(client, Options{}) }

// NewWithOptions returns a Resolver over client.
func NewWithOptions(client Watcher, opts Options) *Resolver {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(10*time.Second, opts.MinBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Resolver{client: client, opts: opts}
}

// Resolve opens a stream for name and waits for its first message: an
// unknown service is an error wrapping discovery.ErrUnknownService.
func (r *Resolver) Resolve(ctx context.Context, name string) (discovery.Watch, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := r.client.Watch(sctx, &controlpb.WatchRequest{Service: name}, grpc.MaxCallRecvMsgSize(maxMessageBytes))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("controlplane: watch %q: %w", name, err)
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("controlplane: %q: %w", name, discovery.ErrUnknownService)
		}
		return nil, fmt.Errorf("controlplane: watch %q: %w", name, err)
	}
	if first.GetKind() != controlpb.Kind_SNAPSHOT {
		cancel()
		return nil, fmt.Errorf("controlplane: watch %q: the stream began with %v, not a snapshot", name, first.GetKind())
	}
	w := &watch{cancel: cancel, stream: stream, pending: convert(first)}
	return w, nil
}

type watch struct {
	cancel context.CancelFunc
	stream grpc.ServerStreamingClient[controlpb.EndpointUpdate]

	mu      sync.Mutex // Next is not called concurrently, Close may be
	pending []discovery.Update
	closed  bool
}

// Next returns the next change. The stream is read on the caller's
// goroutine; Close, the resolve context or ctx ends a blocked read. A read
// cannot be abandoned without losing its message, so a ctx that ends
// cancels the stream: the watch is over and must be resolved again.
func (w *watch) Next(ctx context.Context) (discovery.Update, error) {
	for {
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return discovery.Update{}, discovery.ErrClosed
		}
		if len(w.pending) > 0 {
			u := w.pending[0]
			w.pending = w.pending[1:]
			w.mu.Unlock()
			return u, nil
		}
		w.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return discovery.Update{}, err
		}
		stop := context.AfterFunc(ctx, w.cancel)
		msg, err := w.stream.Recv()
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return discovery.Update{}, ctx.Err()
			}
			w.mu.Lock()
			closed := w.closed
			w.mu.Unlock()
			if closed {
				return discovery.Update{}, discovery.ErrClosed
			}
			return discovery.Update{}, fmt.Errorf("controlplane: stream: %w", err)
		}
		w.mu.Lock()
		w.pending = append(w.pending, convert(msg)...)
		w.mu.Unlock()
	}
}

func (w *watch) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	return nil
}

// convert turns one stream message into discovery updates: a snapshot
// becomes a Reset, an addition an Add (an endpoint turning not ready is
// replaced by its NotReady form, which Cache.Endpoints withholds), a
// removal a Remove of the keys. An unknown kind changes nothing.
func convert(msg *controlpb.EndpointUpdate) []discovery.Update {
	var kind discovery.UpdateKind
	switch msg.GetKind() {
	case controlpb.Kind_SNAPSHOT:
		kind = discovery.Reset
	case controlpb.Kind_ADD:
		kind = discovery.Add
	case controlpb.Kind_REMOVE:
		kind = discovery.Remove
		eps := make([]discovery.Endpoint, 0, len(msg.GetEndpoints()))
		for _, ep := range msg.GetEndpoints() {
			eps = append(eps, discovery.Endpoint{Addr: ep.GetAddress(), Identity: ep.GetIdentity()})
		}
		return []discovery.Update{{Kind: kind, Endpoints: eps}}
	default:
		return nil
	}
	var eps []discovery.Endpoint
	for _, ep := range msg.GetEndpoints() {
		eps = append(eps, endpoint(ep))
	}
	if kind == discovery.Add && len(eps) == 0 {
		return nil
	}
	return []discovery.Update{{Kind: kind, Endpoints: eps}}
}

// endpoint converts one endpoint. A pod IP that does not parse is left
// unknown (the Index then has no entry for it) and ports out of range
// are dropped; ports are sorted and unique.
func endpoint(ep *controlpb.Endpoint) discovery.Endpoint {
	e := discovery.Endpoint{
		Addr:     ep.GetAddress(),
		Identity: ep.GetIdentity(),
		Weight:   max(ep.GetWeight(), 1),
		Zone:     ep.GetZone(),
		NotReady: !ep.GetReady(),
	}
	if ip, err := netip.ParseAddr(ep.GetPodIp()); err == nil && ip.Zone() == "" {
		e.PodIP = ip.Unmap()
	}
	for _, p := range ep.GetPorts() {
		if p.GetPort() >= 1 && p.GetPort() <= 65535 {
			e.Ports = append(e.Ports, uint16(p.GetPort()))
		}
	}
	slices.Sort(e.Ports)
	e.Ports = slices.Compact(e.Ports)
	return e
}

// service converts one catalog entry. Only TCP ports are kept: the mesh
// carries TCP, and a virtual IP:port that is UDP or SCTP must stay
// unknown to the transparent path.
func service(svc *controlpb.Service) discovery.Service {
	out := discovery.Service{Name: svc.GetName(), Endpoints: []discovery.Endpoint{}}
	for _, s := range svc.GetVirtualIps() {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
			out.VirtualIPs = append(out.VirtualIPs, ip.Unmap())
		}
	}
	for _, p := range svc.GetPorts() {
		if proto := p.GetProtocol(); proto != "" && proto != "TCP" {
			continue
		}
		if p.GetPort() < 1 || p.GetPort() > 65535 || p.GetTargetPort() > 65535 {
			continue
		}
		out.Ports = append(out.Ports, discovery.ServicePort{Name: p.GetName(), Port: uint16(p.GetPort()), TargetPort: uint16(p.GetTargetPort())})
	}
	for _, ep := range svc.GetEndpoints() {
		out.Endpoints = append(out.Endpoints, endpoint(ep))
	}
	return out
}
