package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
)

// Router maps the server name of a new connection to the address of the
// sidecar to relay it to.
type Router interface {
	Route(serverName string) (netip.AddrPort, error)
}

// Errors of Exports.Route, for the drop reasons.
var (
	// ErrNotExported: the name is a gateway name, but of a service this
	// gateway does not export (or no longer).
	ErrNotExported = errors.New("gateway: service not exported")
	// ErrNoEndpoint: the service is exported but has no such endpoint,
	// or no ready one.
	ErrNoEndpoint = errors.New("gateway: no such endpoint")
)

// Exports is the Router of a gateway: the services of its own cluster it
// exports, each followed through a discovery.Resolver. Only the listed
// services are reachable, which makes the list the gateway's allow-list:
// a name of any other service is refused whatever the resolver knows.
type Exports struct {
	res    discovery.Resolver
	names  []string
	logger *slog.Logger

	mu     sync.Mutex
	tables map[string]*serviceRoutes // by service; replaced whole
	ready  chan struct{}             // closed when every service had its first answer
	once   sync.Once
	wg     sync.WaitGroup
}

// serviceRoutes is one service's endpoints as the gateway routes them.
type serviceRoutes struct {
	byLabel map[string]netip.AddrPort
	ready   []netip.AddrPort
	next    atomic.Uint64 // round robin over ready, for ServiceName
}

// NewExports routes to the services named, as res resolves them; Run
// follows them.
func NewExports(res discovery.Resolver, services []string, logger *slog.Logger) *Exports {
	if logger == nil {
		logger = slog.Default()
	}
	return &Exports{res: res, names: services, logger: logger,
		tables: map[string]*serviceRoutes{}, ready: make(chan struct{})}
}

// Ready is closed once every exported service has been resolved once.
func (x *Exports) Ready() <-chan struct{} { return x.ready }

// Run follows every exported service until ctx ends. A service the
// resolver does not know (yet) is retried every second: exporting it
// first and deploying it later is allowed.
func (x *Exports) Run(ctx context.Context) {
	var first sync.WaitGroup
	for _, name := range x.names {
		first.Add(1)
		x.wg.Add(1)
		go func() {
			defer x.wg.Done()
			x.follow(ctx, name, first.Done)
		}()
	}
	go func() {
		first.Wait()
		x.once.Do(func() { close(x.ready) })
	}()
	<-ctx.Done()
	x.wg.Wait()
}

func (x *Exports) follow(ctx context.Context, name string, firstDone func()) {
	var once sync.Once
	done := func() { once.Do(firstDone) }
	defer done()
	for ctx.Err() == nil {
		w, err := x.res.Resolve(ctx, name)
		if err != nil {
			if ctx.Err() == nil {
				x.logger.Warn("gateway: cannot resolve exported service; retrying", "service", name, "err", err)
				done()
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		x.watch(ctx, name, w, done)
		w.Close()
	}
}

func (x *Exports) watch(ctx context.Context, name string, w discovery.Watch, done func()) {
	var eps []discovery.Endpoint
	for {
		u, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				x.logger.Warn("gateway: watch of exported service ended; resolving again", "service", name, "err", err)
			}
			return
		}
		eps = apply(eps, u)
		x.install(ctx, name, eps)
		done()
	}
}

// apply returns eps changed by u.
func apply(eps []discovery.Endpoint, u discovery.Update) []discovery.Endpoint {
	switch u.Kind {
	case discovery.Reset:
		return discovery.CloneEndpoints(u.Endpoints)
	case discovery.Add:
		out := discovery.CloneEndpoints(eps)
		for _, n := range u.Endpoints {
			replaced := false
			for i := range out {
				if out[i].Key() == n.Key() {
					out[i], replaced = n, true
				}
			}
			if !replaced {
				out = append(out, n)
			}
		}
		return out
	case discovery.Remove:
		var out []discovery.Endpoint
		for _, e := range eps {
			gone := false
			for _, r := range u.Endpoints {
				gone = gone || r.Key() == e.Key()
			}
			if !gone {
				out = append(out, e)
			}
		}
		return out
	}
	return eps
}

// install builds the service's routes from eps. Addresses are resolved
// here, off the packet path; an endpoint whose address does not resolve
// is left out, with a warning.
func (x *Exports) install(ctx context.Context, name string, eps []discovery.Endpoint) {
	t := &serviceRoutes{byLabel: map[string]netip.AddrPort{}}
	for _, ep := range eps {
		ap, err := resolveUDP(ctx, ep.Addr)
		if err != nil {
			x.logger.Warn("gateway: exported endpoint left out: address does not resolve", "service", name, "endpoint", ep.Addr, "err", err)
			continue
		}
		t.byLabel[EndpointLabel(ep)] = ap
		if ep.Ready() {
			t.ready = append(t.ready, ap)
		}
	}
	x.mu.Lock()
	x.tables[name] = t
	x.mu.Unlock()
	x.logger.Info("gateway: exported service updated", "service", name, "endpoints", len(t.byLabel), "ready", len(t.ready))
}

func resolveUDP(ctx context.Context, addr string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", port, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s has no address", host)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(p)), nil
}

// Destinations lists the addresses of every exported endpoint, each
// once: where the relay learns the routing prefixes of connection IDs
// (Relay's probes), so it can take over connections another gateway of
// the cluster routed.
func (x *Exports) Destinations() []netip.AddrPort {
	x.mu.Lock()
	defer x.mu.Unlock()
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for _, t := range x.tables {
		for _, ap := range t.byLabel {
			if !seen[ap] {
				seen[ap] = true
				out = append(out, ap)
			}
		}
	}
	return out
}

// Route returns where a connection with serverName goes: the endpoint it
// names (an endpoint of any exported service), or for a service's name
// one of its ready endpoints in turn.
func (x *Exports) Route(serverName string) (netip.AddrPort, error) {
	service, label, err := ParseName(serverName)
	if err != nil {
		return netip.AddrPort{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if service == "" {
		for _, t := range x.tables {
			if ap, ok := t.byLabel[label]; ok {
				return ap, nil
			}
		}
		return netip.AddrPort{}, fmt.Errorf("%w: no exported service has endpoint %s", ErrNoEndpoint, label)
	}
	t := x.tables[service]
	if t == nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrNotExported, service)
	}
	if len(t.ready) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: service %q has no ready endpoint", ErrNoEndpoint, service)
	}
	return t.ready[(t.next.Add(1)-1)%uint64(len(t.ready))], nil
}
