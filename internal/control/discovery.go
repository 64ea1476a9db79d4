package control

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// EndpointSet is one service's endpoints at one moment. It is immutable
// once a Source publishes it.
type EndpointSet struct {
	// Exists is false when the service does not exist (any more).
	Exists bool
	// Endpoints by EndpointKey.
	Endpoints map[string]*controlpb.Endpoint
}

// Catalog is every service of the mesh, by NAME.NAMESPACE, with its
// virtual IPs, ports and endpoints. It and its services are immutable once
// a Source publishes them.
type Catalog map[string]*controlpb.Service

// EndpointKey identifies an endpoint within a set, as the sidecar's
// discovery.Endpoint.Key does: address and identity.
func EndpointKey(ep *controlpb.Endpoint) string { return ep.GetAddress() + "|" + ep.GetIdentity() }

// Source tells where services' endpoints are. Subscribing is cheap; the
// Source keeps one watch per kind for the whole process, not one per
// subscription.
type Source interface {
	// Subscribe follows service, NAME.NAMESPACE, until the subscription
	// is closed.
	Subscribe(service string) Subscription
	// Catalog returns the current catalog and a channel closed when it
	// changes.
	Catalog() (Catalog, <-chan struct{})
}

// Subscription follows one service.
type Subscription interface {
	// Current returns the service's current set and a channel closed
	// when it changes.
	Current() (*EndpointSet, <-chan struct{})
	Close()
}

// Authorizer decides whether the caller of an RPC may use it; it returns
// a gRPC status error when not.
type Authorizer func(ctx context.Context) error

// DiscoveryServer implements the Discovery service over a Source. Each
// stream sends what changed since its own last message, computed from the
// Source's immutable sets, so a slow client never holds up the Source or
// other clients and never builds a backlog: it skips intermediate states.
type DiscoveryServer struct {
	controlpb.UnimplementedDiscoveryServer

	src       Source
	authorize Authorizer
	logger    *slog.Logger
	catalog   catalogFeed
}

// NewDiscoveryServer returns a Discovery service over src; authorize runs
// before every stream (MeshPeer in production).
func NewDiscoveryServer(src Source, authorize Authorizer, logger *slog.Logger) *DiscoveryServer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &DiscoveryServer{src: src, authorize: authorize, logger: logger, catalog: catalogFeed{src: src}}
}

// CheckServiceName validates NAME.NAMESPACE: two DNS labels.
func CheckServiceName(s string) error {
	name, ns, ok := strings.Cut(s, ".")
	if !ok || !isDNSLabel(name) || !isDNSLabel(ns) {
		return fmt.Errorf("service %q is not NAME.NAMESPACE", s)
	}
	return nil
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Watch streams one service's endpoints: a snapshot, then changes.
func (s *DiscoveryServer) Watch(req *controlpb.WatchRequest, stream controlpb.Discovery_WatchServer) error {
	ctx := stream.Context()
	if err := s.authorize(ctx); err != nil {
		return err
	}
	name := req.GetService()
	if err := CheckServiceName(name); err != nil {
		return status.Errorf(codes.InvalidArgument, "watch: %v", err)
	}
	sub := s.src.Subscribe(name)
	defer sub.Close()
	set, changed := sub.Current()
	if !set.Exists {
		return status.Errorf(codes.NotFound, "watch: no service %s", name)
	}
	if err := stream.Send(&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT, Endpoints: sortedValues(set.Endpoints)}); err != nil {
		return err
	}
	sent := set
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
		set, changed = sub.Current()
		for _, u := range endpointChanges(sent, set) {
			if err := stream.Send(u); err != nil {
				return err
			}
		}
		sent = set
	}
}

// endpointChanges returns the updates that turn old into cur: an empty
// snapshot for a service that went away, else removals, then additions
// and replacements.
func endpointChanges(old, cur *EndpointSet) []*controlpb.EndpointUpdate {
	if !cur.Exists {
		if old.Exists {
			return []*controlpb.EndpointUpdate{{Kind: controlpb.Kind_SNAPSHOT}}
		}
		return nil
	}
	if !old.Exists {
		return []*controlpb.EndpointUpdate{{Kind: controlpb.Kind_SNAPSHOT, Endpoints: sortedValues(cur.Endpoints)}}
	}
	var removed, added []*controlpb.Endpoint
	for k, ep := range old.Endpoints {
		if _, ok := cur.Endpoints[k]; !ok {
			removed = append(removed, &controlpb.Endpoint{Address: ep.GetAddress(), Identity: ep.GetIdentity()})
		}
	}
	for k, ep := range cur.Endpoints {
		if prev, ok := old.Endpoints[k]; !ok || !proto.Equal(prev, ep) {
			added = append(added, ep)
		}
	}
	var out []*controlpb.EndpointUpdate
	if len(removed) > 0 {
		out = append(out, &controlpb.EndpointUpdate{Kind: controlpb.Kind_REMOVE, Endpoints: sortByKey(removed)})
	}
	if len(added) > 0 {
		out = append(out, &controlpb.EndpointUpdate{Kind: controlpb.Kind_ADD, Endpoints: sortByKey(added)})
	}
	return out
}

// WatchIndex streams the catalog: a snapshot, then the services removed
// and the services added or changed (each sent whole).
func (s *DiscoveryServer) WatchIndex(_ *controlpb.WatchIndexRequest, stream controlpb.Discovery_WatchIndexServer) error {
	ctx := stream.Context()
	if err := s.authorize(ctx); err != nil {
		return err
	}
	sent := s.catalog.current()
	if err := stream.Send(&controlpb.IndexUpdate{Kind: controlpb.Kind_SNAPSHOT, Services: sortedServices(sent.cat)}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-sent.changed:
		}
		cur := s.catalog.current()
		for _, u := range cur.since(sent) {
			if err := stream.Send(u); err != nil {
				return err
			}
		}
		sent = cur
	}
}

// catalogFeed follows the Source's catalog for all WatchIndex streams, so
// that the difference between one catalog and the next is computed once
// per change, not once per stream: it takes a pass over every service,
// and with 1,000 services and 200 streams that was half the control
// plane's CPU per change (docs/benchmarks.md, "Control plane (issue
// 14)"). A stream that fell more than one version behind (it was busy
// sending) computes its own difference, so it still skips intermediate
// states instead of replaying them, and no stream holds up another.
type catalogFeed struct {
	src Source

	mu     sync.Mutex
	latest *catalogVersion // nil until the first stream
}

// catalogVersion is one catalog the feed saw. Only the latest is kept by
// the feed; each stream keeps the one it last sent.
type catalogVersion struct {
	seq     uint64
	cat     Catalog
	changed <-chan struct{} // closed once the Source has a newer catalog
	// updates turn version seq-1 into this one.
	updates []*controlpb.IndexUpdate
}

// current returns the latest version, making a new one if the Source's
// catalog changed since the feed last looked.
func (f *catalogFeed) current() *catalogVersion {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.latest == nil {
		cat, changed := f.src.Catalog()
		f.latest = &catalogVersion{cat: cat, changed: changed}
	}
	for {
		select {
		case <-f.latest.changed:
		default:
			return f.latest
		}
		prev := f.latest
		cat, changed := f.src.Catalog()
		f.latest = &catalogVersion{seq: prev.seq + 1, cat: cat, changed: changed, updates: catalogChanges(prev.cat, cat)}
	}
}

// since returns the updates that turn old, an earlier version of the same
// feed, into v: the shared ones when old is v's predecessor.
func (v *catalogVersion) since(old *catalogVersion) []*controlpb.IndexUpdate {
	switch v.seq {
	case old.seq:
		return nil
	case old.seq + 1:
		return v.updates
	}
	return catalogChanges(old.cat, v.cat)
}

// catalogChanges returns the updates that turn old into cur: removals,
// then additions and replacements.
func catalogChanges(old, cur Catalog) []*controlpb.IndexUpdate {
	removed, added := Catalog{}, Catalog{}
	for name := range old {
		if _, ok := cur[name]; !ok {
			removed[name] = &controlpb.Service{Name: name}
		}
	}
	for name, svc := range cur {
		// Sources publish a new *Service only when it changed, but
		// comparing values keeps this right for any Source.
		if prev, ok := old[name]; !ok || (prev != svc && !proto.Equal(prev, svc)) {
			added[name] = svc
		}
	}
	var out []*controlpb.IndexUpdate
	if len(removed) > 0 {
		out = append(out, &controlpb.IndexUpdate{Kind: controlpb.Kind_REMOVE, Services: sortedServices(removed)})
	}
	if len(added) > 0 {
		out = append(out, &controlpb.IndexUpdate{Kind: controlpb.Kind_ADD, Services: sortedServices(added)})
	}
	return out
}

func sortedValues(m map[string]*controlpb.Endpoint) []*controlpb.Endpoint {
	out := make([]*controlpb.Endpoint, 0, len(m))
	for _, ep := range m {
		out = append(out, ep)
	}
	return sortByKey(out)
}

func sortByKey(eps []*controlpb.Endpoint) []*controlpb.Endpoint {
	slices.SortFunc(eps, func(a, b *controlpb.Endpoint) int { return strings.Compare(EndpointKey(a), EndpointKey(b)) })
	return eps
}

func sortedServices(cat Catalog) []*controlpb.Service {
	out := make([]*controlpb.Service, 0, len(cat))
	for _, svc := range cat {
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b *controlpb.Service) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}
