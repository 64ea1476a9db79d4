package outbound

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// ErrNoRoute is wrapped when no endpoint of a service could be reached.
var ErrNoRoute = errors.New("outbound: no reachable endpoint")

// connector finds a connection to one endpoint of a service: it asks the
// balancer, skips endpoints in back-off while others remain, and tries up
// to attempts distinct endpoints.
type connector struct {
	endpoints *endpointSets
	peers     Peers
	balancer  Balancer
	attempts  int
	now       func() time.Time
}

func newConnector(cfg Config) *connector {
	return &connector{endpoints: newEndpointSets(cfg.Discovery), peers: cfg.Peers, balancer: cfg.Balancer, attempts: cfg.MaxAttempts, now: time.Now}
}

// pick is one balancer pick in progress; it must end with done (or
// report, for work whose outcome and end coincide) exactly once.
type pick struct {
	balancer Balancer
	ep       balance.Endpoint
	start    time.Time
	now      func() time.Time
}

// observe tells the balancer how the picked work went; the latency is the
// time since the pick.
func (p *pick) observe(failed bool) {
	if p.balancer == nil {
		return // a pinned endpoint: no balancer chose it
	}
	p.balancer.Observe(p.ep, balance.Outcome{Latency: p.now().Sub(p.start), Failed: failed})
}

// done ends the picked work.
func (p *pick) done() {
	if p.balancer != nil {
		p.balancer.Done(p.ep)
	}
}

// report is observe and done, for work that ends with its outcome.
func (p *pick) report(failed bool) {
	p.observe(failed)
	p.done()
}

// connectError is a failure to reach any endpoint of a service, with the
// kind of proxy error it maps to.
type connectError struct {
	err  error
	kind bridge.ErrorKind
}

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// connect returns the shared connection to an endpoint of service and the
// pick to report on, preferring endpoints whose keys are not in avoid.
// Its errors are *connectError.
func (c *connector) connect(ctx context.Context, service string, avoid []string) (PeerConn, *pick, error) {
	pc, pk, err := c.tryEndpoints(ctx, service, avoid)
	if err != nil {
		return nil, nil, &connectError{err: err, kind: connectErrorKind(ctx, err)}
	}
	return pc, pk, nil
}

// connectTarget is connect for t's service, or, when t is pinned to one
// endpoint (an app that dialled a pod IP chose that pod), the connection
// to that endpoint alone: the balancer neither picks nor learns from it.
func (c *connector) connectTarget(ctx context.Context, t target) (PeerConn, *pick, error) {
	if t.pinned == nil {
		return c.connect(ctx, t.service, t.avoid)
	}
	e := parseEndpoints([]discovery.Endpoint{*t.pinned}).eps[0]
	err := e.idErr
	var pc PeerConn
	if err == nil {
		pc, err = c.peers.Get(ctx, e.addr, e.id)
	}
	if err != nil {
		err = fmt.Errorf("%w: endpoint %s of %q: %w", ErrNoRoute, e.addr, t.service, err)
		return nil, nil, &connectError{err: err, kind: connectErrorKind(ctx, err)}
	}
	return pc, &pick{now: c.now, start: c.now()}, nil
}

func (c *connector) tryEndpoints(ctx context.Context, service string, avoid []string) (PeerConn, *pick, error) {
	set, err := c.endpoints.get(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	tried := make([]bool, len(set.eps))
	skipTried := func(i int) bool { return tried[i] }
	// again: the endpoint failed as one restarting after a drain (the
	// probe found it still down, or refusing while it drained): once
	// another endpoint has been tried since, and no untried one is left,
	// it is tried once more, for it may be back by then (a rolling
	// restart: it restarted while the other began to drain).
	again, retried := make([]bool, len(set.eps)), make([]bool, len(set.eps))
	last := -1
	skipNotAgain := func(i int) bool { return !again[i] || i == last }
	var earlier []string
	// Endpoints in back-off (failed dial, draining), and those a retry
	// avoids, are skipped while others remain; if none remain they are
	// tried anyway: a dead peer in back-off fails fast, one that drained
	// (and may have restarted since) is probed, this request waiting for
	// the one dial to it (docs/design.md, "A drain is not a failure").
	skipUnavailable := func(i int) bool {
		e := set.eps[i]
		return tried[i] || e.idErr != nil || slices.Contains(avoid, set.keys[i].Key) || c.peers.Unavailable(e.addr, e.id)
	}
	var lastErr error
	for attempt := 0; attempt < c.attempts; attempt++ {
		i, ok := c.balancer.Pick(set.keys, skipUnavailable)
		if !ok {
			i, ok = c.balancer.Pick(set.keys, skipTried)
		}
		if !ok {
			i, ok = c.balancer.Pick(set.keys, skipNotAgain)
			if ok {
				again[i], retried[i] = false, true
			}
		}
		if !ok {
			break
		}
		if lastErr != nil {
			earlier = append(earlier, lastErr.Error())
		}
		tried[i], last = true, i
		pk := &pick{balancer: c.balancer, ep: set.keys[i], start: c.now(), now: c.now}
		e := set.eps[i]
		if e.idErr != nil {
			pk.report(true)
			lastErr = e.idErr
			continue
		}
		pc, err := c.peers.Get(ctx, e.addr, e.id)
		if err != nil {
			pk.report(true)
			lastErr = err
			again[i] = !retried[i] && errors.Is(err, meshcode.ErrPeerRestarting)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return pc, pk, nil
	}
	if lastErr == nil {
		lastErr = discovery.ErrNoEndpoints
	}
	if len(earlier) > 0 {
		// The earlier attempts' errors as text only: what the error is
		// (its kind, its reason) is the last attempt's, as before.
		return nil, nil, fmt.Errorf("%w for %q: %w (earlier attempts: %s)", ErrNoRoute, service, lastErr, strings.Join(earlier, "; "))
	}
	return nil, nil, fmt.Errorf("%w for %q: %w", ErrNoRoute, service, lastErr)
}

// connectErrorKind maps a failure to reach a service: 503 when there is
// nothing to reach (unknown service, no endpoints), 504 when our own time
// ran out, 502 when endpoints exist but none could be reached.
func connectErrorKind(ctx context.Context, err error) bridge.ErrorKind {
	switch {
	case err == nil:
		return bridge.BadGateway
	case errors.Is(err, discovery.ErrUnknownService), errors.Is(err, discovery.ErrNoEndpoints):
		return bridge.Unavailable
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return bridge.Timeout
	default:
		return bridge.BadGateway
	}
}
