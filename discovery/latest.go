package discovery

import (
	"context"
	"maps"
	"sync"
)

// Latest is the mailbox of a Watch that delivers whole endpoint sets: it
// holds at most one pending update, the newest set, so a slow reader
// never blocks its resolver and never builds a backlog. Resolvers embed
// it and call Push when a service's set changes. The zero value is not
// usable; call NewLatest.
type Latest struct {
	notify chan struct{} // capacity 1: "pending may be set"
	done   chan struct{} // closed by Shut

	mu         sync.Mutex
	pending    []Endpoint // shared with the resolver; copied on delivery
	hasPending bool
	closed     bool
}

// NewLatest returns an empty mailbox.
func NewLatest() *Latest {
	return &Latest{notify: make(chan struct{}, 1), done: make(chan struct{})}
}

// Push replaces the pending update with eps, which the caller must not
// change afterwards. It never blocks; after Shut it does nothing.
func (l *Latest) Push(eps []Endpoint) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.pending, l.hasPending = eps, true
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// Next returns the newest set as a Reset (a deep copy), waiting for one
// if none is pending. Sets superseded before Next was called are skipped.
// After Shut it returns ErrClosed.
func (l *Latest) Next(ctx context.Context) (Update, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return Update{}, ErrClosed
		}
		if l.hasPending {
			eps := l.pending
			l.pending, l.hasPending = nil, false
			l.mu.Unlock()
			return Update{Kind: Reset, Endpoints: CloneEndpoints(eps)}, nil
		}
		l.mu.Unlock()
		select {
		case <-l.notify:
		case <-l.done:
		case <-ctx.Done():
			return Update{}, ctx.Err()
		}
	}
}

// Shut closes the mailbox: Next returns ErrClosed from now on. It is
// safe to call more than once.
func (l *Latest) Shut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.pending = nil
		close(l.done)
	}
}

// CloneEndpoints deep-copies eps, metadata maps included; nil stays nil.
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
	}
	return out
}
