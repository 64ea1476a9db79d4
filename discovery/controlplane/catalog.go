package controlplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// WatchCatalog follows the control plane's catalog until the watch is
// closed. It returns at once: the first list comes with the first
// snapshot, and until then Next blocks (so an Index stays unsynced, and
// the transparent path closed, while the control plane is unreachable).
// ctx is not used after the call.
func (r *Resolver) WatchCatalog(context.Context) (discovery.CatalogWatch, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cw := &catalogWatch{LatestCatalog: discovery.NewLatestCatalog(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cw.done)
		r.followCatalog(ctx, cw.LatestCatalog)
	}()
	return cw, nil
}

type catalogWatch struct {
	*discovery.LatestCatalog
	cancel context.CancelFunc
	done   chan struct{}
}

// Close stops the stream and waits for its goroutine.
func (cw *catalogWatch) Close() error {
	cw.cancel()
	<-cw.done
	cw.Shut()
	return nil
}

// followCatalog reads WatchIndex streams, reconnecting with back-off,
// until ctx ends, and pushes the complete list after each message.
func (r *Resolver) followCatalog(ctx context.Context, out *discovery.LatestCatalog) {
	backoff := r.opts.MinBackoff
	for {
		delivered, err := r.readCatalog(ctx, out)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			backoff = r.opts.MinBackoff
		}
		r.opts.Logger.Warn("controlplane: catalog stream failed; reconnecting", "err", err, "backoff", backoff)
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, r.opts.MaxBackoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// readCatalog reads one stream until it fails; delivered reports whether
// it got at least one message.
func (r *Resolver) readCatalog(ctx context.Context, out *discovery.LatestCatalog) (delivered bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.client.WatchIndex(sctx, &controlpb.WatchIndexRequest{}, grpc.MaxCallRecvMsgSize(maxMessageBytes))
	if err != nil {
		return false, fmt.Errorf("controlplane: watch catalog: %w", err)
	}
	var cat map[string]discovery.Service // nil until the snapshot
	for {
		msg, err := stream.Recv()
		if err != nil {
			return delivered, fmt.Errorf("controlplane: catalog stream: %w", err)
		}
		if cat == nil && msg.GetKind() != controlpb.Kind_SNAPSHOT {
			return delivered, errors.New("controlplane: the catalog stream began without a snapshot")
		}
		delivered = true
		if !applyCatalog(&cat, msg) {
			continue
		}
		out.Push(sortedCatalog(cat))
	}
}

// applyCatalog applies one message to *cat, reporting whether it changed
// anything; an unknown kind changes nothing.
func applyCatalog(cat *map[string]discovery.Service, msg *controlpb.IndexUpdate) bool {
	switch msg.GetKind() {
	case controlpb.Kind_SNAPSHOT:
		*cat = make(map[string]discovery.Service, len(msg.GetServices()))
		fallthrough
	case controlpb.Kind_ADD:
		for _, svc := range msg.GetServices() {
			(*cat)[svc.GetName()] = service(svc)
		}
	case controlpb.Kind_REMOVE:
		for _, svc := range msg.GetServices() {
			delete(*cat, svc.GetName())
		}
	default:
		return false
	}
	return true
}

// sortedCatalog returns the services of cat by name. The list is handed
// to LatestCatalog, which copies on Next; the services are not changed
// afterwards, since applyCatalog replaces entries rather than editing
// them.
func sortedCatalog(cat map[string]discovery.Service) []discovery.Service {
	out := make([]discovery.Service, 0, len(cat))
	for _, svc := range cat {
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b discovery.Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}
