package sidecar

import (
	"context"
	"errors"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
)

// listenerKind says what serves an app-facing listener.
type listenerKind uint8

const (
	kindOutbound    listenerKind = iota // a bind or the HTTP proxy
	kindTransparent                     // the transparent outbound listener
	kindPlain                           // plain TCP from outside the mesh
)

// startTransparent prepares what the transparent path's listeners need:
// the address index, fed from the resolver's catalog, and the plain
// inbound server. It runs before any listener is served.
func (s *Sidecar) startTransparent(ctx context.Context, opts Options) error {
	if opts.Listeners.Transparent != "" {
		s.index = discovery.NewIndex()
		cat := s.deps.Resolver.(discovery.Catalog) // check made sure
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.followCatalog(ctx, cat)
		}()
	}
	if opts.Listeners.PlainInbound != "" {
		var err error
		s.plain, err = inbound.NewPlain(inbound.PlainConfig{
			Policy:         opts.Listeners.PlainPolicy,
			ConnectTimeout: opts.Inbound.WithDefaults().ConnectTimeout,
			Logger:         s.log.With("dir", "inbound", "source", "plain"),
			Metrics:        s.deps.Metrics,
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// followCatalog keeps the index current until ctx ends; a failed watch
// is started again after a pause (the index keeps its last table).
func (s *Sidecar) followCatalog(ctx context.Context, cat discovery.Catalog) {
	for {
		err := s.index.Follow(ctx, cat, s.log)
		if ctx.Err() != nil || errors.Is(err, discovery.ErrClosed) {
			return
		}
		s.log.Warn("discovery catalog watch failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// serveListener serves one app-facing listener until it is closed.
func (s *Sidecar) serveListener(l boundListener) error {
	switch l.kind {
	case kindTransparent:
		return s.outbound.ServeTransparent(l.ln, outbound.Transparent{Destinations: s.index})
	case kindPlain:
		return s.plain.Serve(l.ln)
	default:
		return s.outbound.Serve(l.ln, l.service, l.opaque)
	}
}

// Index is the address index of the transparent path, nil without a
// transparent listener.
func (s *Sidecar) Index() *discovery.Index { return s.index }
