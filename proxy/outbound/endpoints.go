package outbound

import (
	"context"
	"fmt"
	"sync"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/balance"
)

// endpoint is a discovered endpoint with its identity parsed.
type endpoint struct {
	addr string
	id   identity.ID
	// idErr is why the advertised identity is unusable; such an endpoint
	// is never dialed.
	idErr error
}

// endpointSet is one discovery answer for a service, parsed: eps[i] and
// keys[i] describe raw[i].
type endpointSet struct {
	raw  []discovery.Endpoint
	eps  []endpoint
	keys []balance.Endpoint
}

func parseEndpoints(raw []discovery.Endpoint) *endpointSet {
	s := &endpointSet{raw: raw, eps: make([]endpoint, len(raw)), keys: make([]balance.Endpoint, len(raw))}
	for i, e := range raw {
		// The peer address the transport dials: it names the server name
		// too for an endpoint behind a gateway.
		s.eps[i].addr = e.DialAddr()
		id, err := identity.ParseID(e.Identity)
		if err != nil {
			s.eps[i].idErr = fmt.Errorf("endpoint %s has an invalid identity: %w", e.Addr, err)
		} else {
			s.eps[i].id = id
		}
		s.keys[i] = balance.Endpoint{Key: e.Key(), Weight: e.Weight}
	}
	return s
}

// sameSlice reports whether a and b are the same slice (not merely equal):
// discovery hands out one immutable slice per update.
func sameSlice(a, b []discovery.Endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// endpointSets parses each service's endpoints once per discovery update:
// identities are checked when a new set arrives, not on every pick.
type endpointSets struct {
	discovery Endpoints
	mu        sync.Mutex
	// last holds only services discovery knew, so requests naming
	// arbitrary hosts on the HTTP proxy listener cannot grow it.
	last map[string]*endpointSet
}

func newEndpointSets(d Endpoints) *endpointSets {
	return &endpointSets{discovery: d, last: make(map[string]*endpointSet)}
}

// get returns the parsed endpoints of service.
func (s *endpointSets) get(ctx context.Context, service string) (*endpointSet, error) {
	raw, err := s.discovery.Endpoints(ctx, service)
	if err != nil {
		return nil, discoveryError(service, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if set := s.last[service]; set != nil && sameSlice(set.raw, raw) {
		return set, nil
	}
	set := parseEndpoints(raw)
	s.last[service] = set
	return set, nil
}
