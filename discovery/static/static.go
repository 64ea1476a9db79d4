// Package static is a discovery.Resolver backed by a JSON file that is
// polled and reloaded when it changes, or by an in-memory map (NewFromMap,
// Set) for tests and demos.
//
// # File format
//
//	{
//	  "services": {
//	    "echo": {
//	      "endpoints": [
//	        {
//	          "addr": "127.0.0.1:4143",
//	          "identity": "spiffe://demo.local/ns/default/sa/echo",
//	          "weight": 1,
//	          "zone": "a",
//	          "metadata": {"k": "v"}
//	        }
//	      ]
//	    },
//	    "orders.shop": {
//	      "virtual_ips": ["10.96.0.10"],
//	      "ports": [{"name": "http", "port": 80, "target_port": 8080}],
//	      "endpoints": [
//	        {
//	          "addr": "10.1.0.5:4143",
//	          "identity": "spiffe://cluster.local/ns/shop/sa/orders",
//	          "pod_ip": "10.1.0.5",
//	          "ports": [8080],
//	          "ready": true
//	        }
//	      ]
//	    }
//	  }
//	}
//
// The top-level object has one optional member, "services", mapping a
// service name to an object with three optional members (a service with
// no or an empty "endpoints" exists but has no endpoints):
//
//   - endpoints: the service's peers, described below.
//   - virtual_ips: IP addresses (IPv4 or IPv6, no host names, no zone, not
//     0.0.0.0 or ::) an app may dial to mean this service, as a cluster
//     IP; the transparent outbound path maps them back to the service
//     (discovery.Index). Requires ports.
//   - ports: the service's ports, each an object with port (required,
//     1-65535: the port on the virtual IPs), target_port (optional,
//     0-65535, 0 or absent meaning port: the port on the endpoints' pods)
//     and name (optional). No two with the same port or name.
//
// Each endpoint has:
//
//   - addr (required): the peer proxy's QUIC address as host:port; the
//     host must be non-empty and the port a number in 1-65535.
//   - identity (required): the SPIFFE ID the peer must present; it must
//     start with "spiffe://" and name a trust domain.
//   - server_name (optional): the TLS server name to send, for an
//     endpoint of another cluster reached through its gateway (addr is
//     then the gateway's address, identity still the endpoint's): a
//     lower-case DNS name as a service name is. Endpoints that differ
//     only by server_name are different peers.
//   - weight (optional): an integer in 0-4294967295; 0 or absent means 1.
//   - zone (optional): a locality label.
//   - metadata (optional): an object of string values, passed through.
//   - pod_ip (optional): the workload's own IP (as virtual_ips), which the
//     transparent path maps back to this endpoint when an app dials it.
//   - ports (optional): the pod's ports reachable through the mesh, an
//     array of integers in 1-65535; absent or empty means every port.
//     Requires pod_ip.
//   - ready (optional): false keeps the endpoint listed but gives it no
//     balanced traffic; absent means true.
//
// A file without the cluster fields (virtual_ips, ports, pod_ip, ready)
// means what it always meant.
//
// Service names are plain lower-case DNS-style names: dot-separated labels
// of a-z, 0-9 and '-' (no port suffix, no upper case); in a cluster,
// name.namespace. Within a service no two endpoints may share both addr
// and identity. An address must mean one thing: no virtual IP:port may
// belong to two services, no pod IP to two different peers (another addr
// or identity; the same peer may serve several services), and no IP may
// be both a virtual IP and a pod IP. IPv4-mapped IPv6 addresses are read
// as their IPv4 form.
//
// Decoding is strict: unknown fields, duplicate keys, values of the wrong
// type, null in place of an object, array or string, and anything after
// the top-level object are errors. Every error is a *ParseError whose
// message names the service and endpoint index where applicable and gives
// the JSON path and byte offset, for example:
//
//	service "echo": endpoint 0: unknown field "adr" (at $.services["echo"].endpoints[0].adr, offset 48)
//
// Files larger than MaxFileSize (16 MiB) are rejected.
//
// # Reloading
//
// New loads the file once (failing if it is missing or invalid) and then
// polls it every Options.PollInterval. A change in modification time or
// size triggers a read; the content is hashed so rewrites with identical
// content cause no updates, and a file modified very recently is re-read
// even if its time and size look unchanged (coarse file-system clocks can
// hide a quick rewrite). An invalid or unreadable file during a reload is
// logged as a warning and the last good data is kept.
//
// # The address catalog
//
// The Resolver is a discovery.Catalog: WatchCatalog yields every service
// with its addresses, now and after every reload or Set, for a
// discovery.Index (Index.Follow).
//
// # Watches
//
// Every watch first yields a discovery.Reset with the service's complete
// current set. Whenever a reload (or Set) changes that set, the watch
// yields another Reset with the new complete set; if the service has
// disappeared, the Reset is empty and the watch stays open, so the
// service may come back. Updates are coalesced per watch: only the latest
// state is kept, so a slow reader never blocks the resolver or other
// watches and never accumulates a backlog.
package static

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/filewatch"
)

// DefaultPollInterval is used when Options.PollInterval is not positive.
const DefaultPollInterval = time.Second

// Options configures New.
type Options struct {
	// PollInterval is how often the file is checked for changes;
	// DefaultPollInterval (1s) if zero or negative.
	PollInterval time.Duration
	// Logger receives reload notices and warnings; slog.Default() if nil.
	Logger *slog.Logger
}

// Resolver is a discovery.Resolver serving the services of a JSON file or
// of an in-memory map. It is safe for concurrent use.
type Resolver struct {
	path     string // "" for NewFromMap
	interval time.Duration
	logger   *slog.Logger

	mu       sync.Mutex
	data     map[string]discovery.Service // never mutated; replaced whole
	watches  map[string]map[*watch]struct{}
	catalogs map[*catalogWatch]struct{}
	closed   bool

	files     *filewatch.Watcher // nil for NewFromMap
	closeOnce sync.Once
}

var (
	_ discovery.Resolver = (*Resolver)(nil)
	_ discovery.Catalog  = (*Resolver)(nil)
)

// New loads the endpoints file at path and starts polling it for changes.
// It fails, naming the file, if the file is missing, unreadable or
// invalid. Call Close to stop polling.
func New(path string, opts Options) (*Resolver, error) {
	r := newResolver(opts.Logger)
	r.path = path
	r.interval = opts.PollInterval
	if r.interval <= 0 {
		r.interval = DefaultPollInterval
	}
	first, failing := true, false
	files, err := filewatch.New(filewatch.Options{
		Paths:    []string{path},
		Interval: r.interval,
		MaxSize:  MaxFileSize,
		Load: func(b [][]byte) error {
			data, err := ParseServices(b[0])
			if err != nil {
				return fmt.Errorf("static: endpoints file %s: %w", path, err)
			}
			if first {
				first = false
				r.data = data
				r.logger.Info("static discovery: loaded endpoints file", "path", path, "services", len(data))
				return nil
			}
			// Logged before the watches hear of the new data, so whoever
			// sees the update also finds the log line.
			if failing {
				failing = false
				r.logger.Info("static discovery: endpoints file is valid again", "path", path)
			}
			r.logger.Info("static discovery: reloaded endpoints file", "path", path, "services", len(data))
			r.apply(data)
			return nil
		},
		Failed: func(err error) {
			failing = true
			r.logger.Warn("static discovery: reload failed; keeping last good data", "path", path, "err", fileError(err))
		},
		// The file went back to the data in force: nothing to load.
		Recovered: func() {
			if failing {
				failing = false
				r.logger.Info("static discovery: endpoints file is valid again", "path", path)
			}
		},
	})
	if err != nil {
		return nil, fileError(err)
	}
	r.files = files
	return r, nil
}

// fileError gives read failures the package's prefix; parse failures
// already carry it.
func fileError(err error) error {
	if re, ok := errors.AsType[*filewatch.ReadError](err); ok {
		return fmt.Errorf("static: endpoints file %w", re)
	}
	return err
}

// NewFromMap returns a Resolver serving a copy of m, with no file behind
// it. The map is not validated (unlike a file); zero weights become 1.
// Use Set to change the data.
func NewFromMap(m map[string][]discovery.Endpoint) *Resolver {
	r := newResolver(nil)
	r.data = normalize(fromMap(m))
	return r
}

// NewFromServices is NewFromMap for services with addresses (virtual IPs,
// pod IPs): a Resolver serving a copy of svcs, not validated. Of two
// services with the same name the later wins. Use SetServices to change
// the data.
func NewFromServices(svcs []discovery.Service) *Resolver {
	r := newResolver(nil)
	r.data = normalize(fromSlice(svcs))
	return r
}

func newResolver(logger *slog.Logger) *Resolver {
	if logger == nil {
		logger = slog.Default()
	}
	return &Resolver{
		logger:   logger,
		data:     map[string]discovery.Service{},
		watches:  make(map[string]map[*watch]struct{}),
		catalogs: make(map[*catalogWatch]struct{}),
	}
}

// Set replaces the served data with a copy of m and notifies the watches
// of every service whose endpoint set changed, exactly as a file reload
// does. Like NewFromMap it does not validate m. On a file-backed Resolver
// the next change of the file replaces the data again.
func (r *Resolver) Set(m map[string][]discovery.Endpoint) {
	r.apply(normalize(fromMap(m)))
}

// SetServices is Set for services with addresses: it replaces the served
// data with a copy of svcs (not validated; of two services with the same
// name the later wins).
func (r *Resolver) SetServices(svcs []discovery.Service) {
	r.apply(normalize(fromSlice(svcs)))
}

// WatchCatalog starts a watch on all services with their addresses, for a
// discovery.Index: it yields the current list at once and a new one after
// every reload or Set. It fails with an error wrapping discovery.ErrClosed
// after Close.
func (r *Resolver) WatchCatalog(ctx context.Context) (discovery.CatalogWatch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("static: watch catalog: resolver closed: %w", discovery.ErrClosed)
	}
	w := &catalogWatch{LatestCatalog: discovery.NewLatestCatalog(), r: r}
	w.Push(catalog(r.data))
	r.catalogs[w] = struct{}{}
	return w, nil
}

// Services returns the names of the services currently served, sorted.
func (r *Resolver) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.data))
}

// Resolve starts a watch on name. It fails with an error wrapping
// discovery.ErrUnknownService if the service is not currently served, and
// with one wrapping discovery.ErrClosed after Close. ctx only bounds the
// call itself; the watch lives until it or the Resolver is closed.
func (r *Resolver) Resolve(ctx context.Context, name string) (discovery.Watch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("static: resolve %q: resolver closed: %w", name, discovery.ErrClosed)
	}
	svc, ok := r.data[name]
	if !ok {
		return nil, fmt.Errorf("static: resolve %q: %w", name, discovery.ErrUnknownService)
	}
	w := &watch{Latest: discovery.NewLatest(), r: r, name: name}
	w.Push(svc.Endpoints)
	ws := r.watches[name]
	if ws == nil {
		ws = make(map[*watch]struct{})
		r.watches[name] = ws
	}
	ws[w] = struct{}{}
	return w, nil
}

// Close stops polling and closes every watch; their Next then returns
// discovery.ErrClosed. It is safe to call more than once.
func (r *Resolver) Close() error {
	r.closeOnce.Do(func() {
		if r.files != nil {
			r.files.Close()
		}
		r.mu.Lock()
		r.closed = true
		all, catalogs := r.watches, r.catalogs
		r.watches, r.catalogs = nil, nil
		r.mu.Unlock()
		for _, ws := range all {
			for w := range ws {
				w.Shut()
			}
		}
		for w := range catalogs {
			w.Shut()
		}
	})
	return nil
}

// apply installs data (which the caller must not retain) and notifies the
// watches whose service changed.
func (r *Resolver) apply(data map[string]discovery.Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	old := r.data
	r.data = data
	for name, ws := range r.watches {
		eps := data[name].Endpoints
		if slices.EqualFunc(old[name].Endpoints, eps, discovery.Endpoint.Equal) {
			continue
		}
		for w := range ws {
			w.Push(eps)
		}
	}
	if len(r.catalogs) > 0 {
		list := catalog(data)
		for w := range r.catalogs {
			w.Push(list)
		}
	}
}

// catalog lists data's services sorted by name; the list shares data.
func catalog(data map[string]discovery.Service) []discovery.Service {
	list := make([]discovery.Service, 0, len(data))
	for _, name := range slices.Sorted(maps.Keys(data)) {
		list = append(list, data[name])
	}
	return list
}

func fromMap(m map[string][]discovery.Endpoint) map[string]discovery.Service {
	out := make(map[string]discovery.Service, len(m))
	for name, eps := range m {
		out[name] = discovery.Service{Name: name, Endpoints: eps}
	}
	return out
}

func fromSlice(svcs []discovery.Service) map[string]discovery.Service {
	out := make(map[string]discovery.Service, len(svcs))
	for _, s := range svcs {
		out[s.Name] = s
	}
	return out
}

// normalize deep-copies m, turning zero weights into 1 and empty metadata
// into nil.
func normalize(m map[string]discovery.Service) map[string]discovery.Service {
	out := make(map[string]discovery.Service, len(m))
	for name, svc := range m {
		c := svc.Clone()
		for i := range c.Endpoints {
			if c.Endpoints[i].Weight == 0 {
				c.Endpoints[i].Weight = 1
			}
			if len(c.Endpoints[i].Metadata) == 0 {
				c.Endpoints[i].Metadata = nil
			}
		}
		out[name] = c
	}
	return out
}

// watch is one Resolve call's view of a service: its mailbox holds the
// latest full set.
type watch struct {
	*discovery.Latest
	r    *Resolver
	name string
}

// Close ends the watch; Next then returns discovery.ErrClosed. It is safe
// to call more than once.
func (w *watch) Close() error {
	w.r.mu.Lock()
	if ws := w.r.watches[w.name]; ws != nil {
		delete(ws, w)
		if len(ws) == 0 {
			delete(w.r.watches, w.name)
		}
	}
	w.r.mu.Unlock()
	w.Shut()
	return nil
}

// catalogWatch is one WatchCatalog call's mailbox of the latest list.
type catalogWatch struct {
	*discovery.LatestCatalog
	r *Resolver
}

// Close ends the watch; Next then returns discovery.ErrClosed. It is safe
// to call more than once.
func (w *catalogWatch) Close() error {
	w.r.mu.Lock()
	delete(w.r.catalogs, w)
	w.r.mu.Unlock()
	w.Shut()
	return nil
}
