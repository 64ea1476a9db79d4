package discovery

import (
	"context"
	"maps"
	"slices"
	"sync"
)

// Latest is the mailbox of a Watch that delivers whole endpoint sets: it
// holds at most one pending update, the newest set, so a slow reader
// never blocks its resolver and never builds a backlog. Resolvers embed
// it and call Push when a service's set changes. The zero value is not
// usable; call NewLatest.
type Latest struct {
	box mailbox[[]Endpoint]
}

// NewLatest returns an empty mailbox.
func NewLatest() *Latest {
	l := &Latest{}
	l.box.init()
	return l
}

// Push replaces the pending update with eps, which the caller must not
// change afterwards. It never blocks; after Shut it does nothing.
func (l *Latest) Push(eps []Endpoint) { l.box.push(eps) }

// Next returns the newest set as a Reset (a deep copy), waiting for one
// if none is pending. Sets superseded before Next was called are skipped.
// After Shut it returns ErrClosed.
func (l *Latest) Next(ctx context.Context) (Update, error) {
	eps, err := l.box.next(ctx)
	if err != nil {
		return Update{}, err
	}
	return Update{Kind: Reset, Endpoints: CloneEndpoints(eps)}, nil
}

// Shut closes the mailbox: Next returns ErrClosed from now on. It is
// safe to call more than once.
func (l *Latest) Shut() { l.box.shut() }

// LatestCatalog is Latest for a CatalogWatch: it holds the newest
// complete list of services. The zero value is not usable; call
// NewLatestCatalog.
type LatestCatalog struct {
	box mailbox[[]Service]
}

// NewLatestCatalog returns an empty mailbox.
func NewLatestCatalog() *LatestCatalog {
	l := &LatestCatalog{}
	l.box.init()
	return l
}

// Push replaces the pending list with svcs, which the caller must not
// change afterwards. It never blocks; after Shut it does nothing.
func (l *LatestCatalog) Push(svcs []Service) { l.box.push(svcs) }

// Next returns the newest list (a deep copy), waiting for one if none is
// pending. After Shut it returns ErrClosed.
func (l *LatestCatalog) Next(ctx context.Context) ([]Service, error) {
	svcs, err := l.box.next(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Service, len(svcs))
	for i, s := range svcs {
		out[i] = s.Clone()
	}
	return out, nil
}

// Shut closes the mailbox: Next returns ErrClosed from now on. It is
// safe to call more than once.
func (l *LatestCatalog) Shut() { l.box.shut() }

// mailbox holds at most one pending value, the newest.
type mailbox[T any] struct {
	notify chan struct{} // capacity 1: "pending may be set"
	done   chan struct{} // closed by shut

	mu         sync.Mutex
	pending    T // shared with the producer; copied by the caller of next
	hasPending bool
	closed     bool
}

func (m *mailbox[T]) init() {
	m.notify = make(chan struct{}, 1)
	m.done = make(chan struct{})
}

func (m *mailbox[T]) push(v T) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.pending, m.hasPending = v, true
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

func (m *mailbox[T]) next(ctx context.Context) (T, error) {
	var zero T
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return zero, ErrClosed
		}
		if m.hasPending {
			v := m.pending
			m.pending, m.hasPending = zero, false
			m.mu.Unlock()
			return v, nil
		}
		m.mu.Unlock()
		select {
		case <-m.notify:
		case <-m.done:
		case <-ctx.Done():
			return zero, ctx.Err()
		}
	}
}

func (m *mailbox[T]) shut() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		var zero T
		m.closed = true
		m.pending = zero
		close(m.done)
	}
}

// CloneEndpoints deep-copies eps, metadata maps and ports included; nil
// stays nil.
func CloneEndpoints(eps []Endpoint) []Endpoint {
	if eps == nil {
		return nil
	}
	out := make([]Endpoint, len(eps))
	copy(out, eps)
	for i := range out {
		if out[i].Metadata != nil {
			out[i].Metadata = maps.Clone(out[i].Metadata)
		}
		out[i].Ports = slices.Clone(out[i].Ports)
	}
	return out
}
