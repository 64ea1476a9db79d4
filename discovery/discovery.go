// Package discovery tells a sidecar where a service's peers are. A Resolver
// watches a service name and yields its endpoint set as a stream of
// updates; implementations (a static file, DNS, a control plane) live in
// sub-packages.
package discovery

import (
	"context"
	"errors"
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
	// Addr is the peer proxy's QUIC (UDP) address, host:port.
	Addr string `json:"addr"`
	// Identity is the SPIFFE ID the peer must present; the connection is
	// refused during the handshake if it presents any other.
	Identity string `json:"identity"`
	// Weight for load balancing; 0 means the default of 1.
	Weight uint32 `json:"weight,omitempty"`
	// Zone is an optional locality label.
	Zone string `json:"zone,omitempty"`
	// Metadata is free-form and passed through untouched.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Key identifies an endpoint within a set; two endpoints with the same key
// are the same peer.
func (e Endpoint) Key() string { return e.Addr + "|" + e.Identity }

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
