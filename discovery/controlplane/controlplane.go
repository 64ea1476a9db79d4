// Package controlplane is a discovery.Resolver over the quicmesh control
// plane's Discovery.Watch stream. Each Resolve opens one stream, whose
// first message is the complete set; later messages are changes.
// Endpoints the control plane reports as not ready are withheld from the
// set (and withdrawn when they turn not ready), so no traffic reaches them.
//
// When the stream fails, the watch returns the error and discovery.Cache
// keeps serving the last set while it re-resolves with back-off; the new
// stream starts with a complete set again, so nothing missed while the
// control plane was away lingers.
package controlplane

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// Watcher is the one call the resolver needs of the control plane.
type Watcher interface {
	Watch(ctx context.Context, in *controlpb.WatchRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[controlpb.EndpointUpdate], error)
}

// Resolver resolves NAME.NAMESPACE service names through the control plane.
type Resolver struct {
	client Watcher
}

var _ discovery.Resolver = (*Resolver)(nil)

// New returns a Resolver over client.
func New(client Watcher) *Resolver { return &Resolver{client: client} }

// Resolve opens a stream for name and waits for its first message: an
// unknown service is an error wrapping discovery.ErrUnknownService.
func (r *Resolver) Resolve(ctx context.Context, name string) (discovery.Watch, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := r.client.Watch(sctx, &controlpb.WatchRequest{Service: name})
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
// becomes a Reset of its ready endpoints; an addition adds the ready ones
// and removes those no longer ready; a removal removes.
func convert(msg *controlpb.EndpointUpdate) []discovery.Update {
	var ready, notReady []discovery.Endpoint
	for _, ep := range msg.GetEndpoints() {
		e := discovery.Endpoint{Addr: ep.GetAddress(), Identity: ep.GetIdentity(), Weight: max(ep.GetWeight(), 1), Zone: ep.GetZone()}
		if ep.GetReady() || msg.GetKind() == controlpb.Kind_REMOVE {
			ready = append(ready, e)
		} else {
			notReady = append(notReady, e)
		}
	}
	switch msg.GetKind() {
	case controlpb.Kind_SNAPSHOT:
		return []discovery.Update{{Kind: discovery.Reset, Endpoints: ready}}
	case controlpb.Kind_REMOVE:
		return []discovery.Update{{Kind: discovery.Remove, Endpoints: ready}}
	case controlpb.Kind_ADD:
		var out []discovery.Update
		if len(notReady) > 0 {
			out = append(out, discovery.Update{Kind: discovery.Remove, Endpoints: notReady})
		}
		if len(ready) > 0 {
			out = append(out, discovery.Update{Kind: discovery.Add, Endpoints: ready})
		}
		return out
	}
	return nil
}
