package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Catalog is implemented by resolvers that know where services live:
// their virtual IPs and their endpoints' pod IPs (the static file, a
// control plane). Index.Follow feeds an Index from one.
type Catalog interface {
	// WatchCatalog starts a watch on the complete list of services. ctx
	// bounds only the call.
	WatchCatalog(ctx context.Context) (CatalogWatch, error)
}

// CatalogWatch yields complete lists of services: the current list first,
// then a new list after every change. LatestCatalog implements Next.
type CatalogWatch interface {
	// Next blocks until the next list, ctx is done or the watch is closed
	// (ErrClosed).
	Next(ctx context.Context) ([]Service, error)
	Close() error
}

// TargetKind says what an original destination turned out to be.
type TargetKind uint8

const (
	// Unknown: no service or mesh endpoint has this address; the
	// transparent path passes the connection through as plain TCP.
	Unknown TargetKind = iota
	// ServiceTarget: a service's virtual IP at one of its ports; balance
	// over the service's (ready) endpoints.
	ServiceTarget
	// EndpointTarget: a mesh endpoint's pod IP at one of its ports; go to
	// that endpoint.
	EndpointTarget
	// Ambiguous: more than one service or endpoint claims the address
	// (inconsistent discovery data). Refuse the connection: passing it
	// through would send mesh traffic in plain text, and picking one
	// would be a guess.
	Ambiguous
)

func (k TargetKind) String() string {
	switch k {
	case Unknown:
		return "unknown"
	case ServiceTarget:
		return "service"
	case EndpointTarget:
		return "endpoint"
	case Ambiguous:
		return "ambiguous"
	}
	return "invalid"
}

// Target is what an Index knows about an original destination. Its
// slices and maps are shared with the Index: do not modify them.
type Target struct {
	Kind TargetKind
	// Service is the service dialled (ServiceTarget) or, for an
	// EndpointTarget, the first service by name that lists the endpoint.
	Service string
	// Port is the service port dialled (ServiceTarget only); Port.Target()
	// is the port on the endpoints.
	Port ServicePort
	// Endpoint is the endpoint dialled (EndpointTarget only), ready or
	// not: the app chose that pod.
	Endpoint Endpoint
}

// Index maps original destinations to services and endpoints. Lookups are
// lock-free reads of an immutable table, safe concurrently with each
// other and with Set. Create it with NewIndex.
type Index struct {
	table  atomic.Pointer[indexTable]
	synced chan struct{}
	once   sync.Once
}

type indexTable struct {
	services map[netip.AddrPort]*Target // virtual IP:port
	pods     map[netip.Addr]*podEntry   // pod IP
}

type podEntry struct {
	target   Target
	allPorts bool
	ports    []uint16 // sorted; when !allPorts
}

// NewIndex returns an empty Index: every lookup is Unknown until Set.
func NewIndex() *Index {
	ix := &Index{synced: make(chan struct{})}
	ix.table.Store(&indexTable{})
	return ix
}

// Synced is closed after the first Set. Until then every destination is
// Unknown, so the transparent path should wait for it rather than pass
// mesh traffic through in plain text.
func (ix *Index) Synced() <-chan struct{} { return ix.synced }

// Lookup returns what dst, an original destination, is: a service by
// virtual IP and port, else an endpoint by pod IP and port, else Unknown.
// IPv4-mapped IPv6 addresses match their IPv4 form.
func (ix *Index) Lookup(dst netip.AddrPort) Target {
	t := ix.table.Load()
	ip := dst.Addr().Unmap()
	if s := t.services[netip.AddrPortFrom(ip, dst.Port())]; s != nil {
		return *s
	}
	if p := t.pods[ip]; p != nil {
		if p.allPorts {
			return p.target
		}
		if _, ok := slices.BinarySearch(p.ports, dst.Port()); ok {
			return p.target
		}
	}
	return Target{}
}

// Set replaces the table with one built from svcs, which Set does not
// keep (it copies what it needs). Invalid (zero) addresses and port 0
// are skipped. An address claimed by two services, a pod IP claimed by
// two different endpoints (by Key), and an IP that is both a virtual IP
// and a pod IP become Ambiguous; Set then returns an error naming each
// conflict, but installs the table all the same.
func (ix *Index) Set(svcs []Service) error {
	order := make([]int, len(svcs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(svcs[a].Name, svcs[b].Name) })

	t := &indexTable{services: map[netip.AddrPort]*Target{}, pods: map[netip.Addr]*podEntry{}}
	var conflicts []string
	ambiguous := &Target{Kind: Ambiguous}
	vipIPs := map[netip.Addr]string{} // virtual IP -> first service
	for _, i := range order {
		s := &svcs[i]
		for _, vip := range s.VirtualIPs {
			if !vip.IsValid() {
				continue
			}
			vip = vip.Unmap()
			if _, seen := vipIPs[vip]; !seen {
				vipIPs[vip] = s.Name
			}
			for _, p := range s.Ports {
				if p.Port == 0 {
					continue
				}
				key := netip.AddrPortFrom(vip, p.Port)
				switch prev := t.services[key]; {
				case prev == nil:
					t.services[key] = &Target{Kind: ServiceTarget, Service: s.Name, Port: p}
				case prev.Kind != Ambiguous && prev.Service != s.Name:
					conflicts = append(conflicts, fmt.Sprintf("%s: virtual address of services %q and %q", key, prev.Service, s.Name))
					t.services[key] = ambiguous
				}
				// Otherwise already ambiguous, or the same service listing
				// an address twice: nothing to add.
			}
		}
		for _, ep := range s.Endpoints {
			if !ep.PodIP.IsValid() {
				continue
			}
			ip := ep.PodIP.Unmap()
			prev := t.pods[ip]
			switch {
			case prev == nil:
				ep.Ports = slices.Clone(ep.Ports)
				t.pods[ip] = &podEntry{
					target:   Target{Kind: EndpointTarget, Service: s.Name, Endpoint: ep},
					allPorts: len(ep.Ports) == 0,
					ports:    slices.Clone(ep.Ports),
				}
			case prev.target.Kind == Ambiguous:
			case prev.target.Endpoint.Key() != ep.Key():
				conflicts = append(conflicts, fmt.Sprintf("%s: pod IP of endpoints %s (service %q) and %s (service %q)",
					ip, prev.target.Endpoint.Key(), prev.target.Service, ep.Key(), s.Name))
				*prev = podEntry{target: *ambiguous, allPorts: true}
			case len(ep.Ports) == 0:
				prev.allPorts, prev.ports = true, nil
			case !prev.allPorts:
				prev.ports = append(prev.ports, ep.Ports...)
			}
		}
	}
	for ip, p := range t.pods {
		if svc, isVIP := vipIPs[ip]; isVIP {
			if p.target.Kind != Ambiguous {
				conflicts = append(conflicts, fmt.Sprintf("%s: virtual IP of service %q and pod IP of endpoint %s (service %q)",
					ip, svc, p.target.Endpoint.Key(), p.target.Service))
			}
			*p = podEntry{target: *ambiguous, allPorts: true}
			for key := range t.services {
				if key.Addr() == ip {
					t.services[key] = ambiguous
				}
			}
			continue
		}
		slices.Sort(p.ports)
		p.ports = slices.Compact(p.ports)
	}
	ix.table.Store(t)
	ix.once.Do(func() { close(ix.synced) })
	if len(conflicts) > 0 {
		slices.Sort(conflicts)
		return fmt.Errorf("discovery: %d conflicting addresses, treated as ambiguous: %s",
			len(conflicts), strings.Join(conflicts, "; "))
	}
	return nil
}

// Follow feeds the Index from c until ctx is done (it then returns nil)
// or the catalog watch fails (it returns the error; ErrClosed when the
// resolver was closed). Conflicts are logged as a warning with logger
// (slog.Default() if nil) when they change, and the table is installed
// anyway.
func (ix *Index) Follow(ctx context.Context, c Catalog, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.Default()
	}
	w, err := c.WatchCatalog(ctx)
	if err != nil {
		return fmt.Errorf("discovery: watch catalog: %w", err)
	}
	defer w.Close()
	lastConflict := ""
	for {
		svcs, err := w.Next(ctx)
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil
			}
			return fmt.Errorf("discovery: catalog watch: %w", err)
		}
		conflict := ""
		if err := ix.Set(svcs); err != nil {
			conflict = err.Error()
		}
		switch {
		case conflict != "" && conflict != lastConflict:
			logger.Warn("discovery: address index has conflicts", "err", conflict)
		case conflict == "" && lastConflict != "":
			logger.Info("discovery: address index conflicts resolved")
		}
		lastConflict = conflict
	}
}
