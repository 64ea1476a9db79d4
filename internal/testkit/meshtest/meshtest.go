// Package meshtest builds meshes for end-to-end tests: sidecars with
// identities from one test CA, apps behind them, and one discovery
// resolver, each reachable by name, all closed by t.Cleanup.
//
//	m := meshtest.New(t)
//	web := m.HTTPApp("web", meshtest.H1, nil) // the echo app
//	m.Start("server", meshtest.Spec{ID: serverID, Routes: map[string]string{"web": web.URL("http")}})
//	c := m.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{{Service: "web"}}, ClientsSpeakFirst: true})
//	resp, err := testkit.H1Client(t).Get("http://" + c.Bind("web") + "/")
//
// How a Spec becomes a running sidecar is known here and nowhere else in
// the tests: when the sidecar's configuration changes, this file changes.
package meshtest

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// TrustDomain is the trust domain of every mesh's CA.
const TrustDomain = "test.local"

// Mesh is a set of named sidecars and apps sharing a CA and a resolver.
type Mesh struct {
	t  testing.TB
	CA *identity.CA
	// transport is every sidecar's transport mode unless its Spec says
	// otherwise ("" is the sidecar's default, auto).
	transport fallback.Mode

	mu       sync.Mutex
	sidecars map[string]*Sidecar
	apps     map[string]*App
	served   map[string]advert               // by sidecar name: what its routes advertise
	explicit map[string][]discovery.Endpoint // by service: set by Resolve, wins over served
	res      *static.Resolver
}

// New is an empty mesh with its own CA. For a *testing.T it also arms
// the goroutine-leak check (testkit.CheckLeaks), which runs after the
// mesh is torn down.
func New(t testing.TB) *Mesh {
	t.Helper()
	if _, ok := t.(*testing.T); ok {
		testkit.CheckLeaks(t)
	}
	m := &Mesh{
		t: t, CA: identitytest.NewCA(t, TrustDomain),
		sidecars: map[string]*Sidecar{}, apps: map[string]*App{},
		served: map[string]advert{}, explicit: map[string][]discovery.Endpoint{},
		res: static.NewFromMap(nil),
	}
	t.Cleanup(func() { m.res.Close() })
	return m
}

// Transports are the transports end-to-end tests run over, each on its
// own: QUIC alone and the TCP fallback transport alone (auto, the
// default, picks QUIC on loopback, so it adds nothing here).
var Transports = []fallback.Mode{fallback.QUIC, fallback.TCP}

// NewOver is New whose sidecars all use transport mode tr unless their
// Spec says otherwise.
func NewOver(t testing.TB, tr fallback.Mode) *Mesh {
	t.Helper()
	m := New(t)
	m.transport = tr
	return m
}

// ForEachTransport runs f as a subtest per transport in Transports: the
// table that makes an end-to-end test run over both.
func ForEachTransport(t *testing.T, f func(t *testing.T, tr fallback.Mode)) {
	t.Helper()
	for _, tr := range Transports {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// Bind is one outbound listener of a sidecar.
type Bind struct {
	// Name is how the test finds the listener (Sidecar.Bind); default
	// Service.
	Name    string
	Service string
	// Opaque tunnels every connection as TCP, without protocol detection.
	Opaque bool
}

// Spec describes one sidecar in test terms.
type Spec struct {
	// ID is the SPIFFE ID of the certificate the mesh CA issues it,
	// unless Identity is set.
	ID       string
	Identity identity.Provider
	// Resolver is its discovery (default: the mesh's resolver).
	Resolver discovery.Resolver
	// Addr is the UDP address for mesh traffic (default 127.0.0.1:0);
	// PacketConn, if set, is the bound socket to use instead.
	Addr       string
	PacketConn *net.UDPConn
	// Transport is its transport mode (default: the mesh's, see NewOver).
	// TCPListener and DialTCP place its TCP transport elsewhere (another
	// network namespace), as PacketConn does for QUIC.
	Transport   fallback.Mode
	TCPListener net.Listener
	DialTCP     func(ctx context.Context, addr string) (net.Conn, error)
	// Fallback tunes the auto transport policy.
	Fallback sidecar.Fallback

	// Routes maps the services it serves to app addresses in the route
	// syntax (tcp://, http://, h2c://, or bare to detect). Each service
	// is advertised in the mesh's resolver at this sidecar, as ID (or
	// AdvertiseID), unless the test called Resolve for it.
	Routes      map[string]string
	AdvertiseID string
	// HeaderTimeout bounds how long the inbound side waits for a
	// request's header (0: the default).
	HeaderTimeout time.Duration
	// Authorization is who may call its routes (nil: the default,
	// every mesh identity).
	Authorization *authz.Policy

	// Binds are its outbound listeners, HTTPProxy its HTTP proxy listener.
	Binds     []Bind
	HTTPProxy bool
	// ClientsSpeakFirst makes protocol detection wait for the first bytes
	// until the hang guard: for listeners whose every client sends first
	// (HTTP, gRPC, WebSocket). With the 1 s default, a client goroutine
	// starved for a second between connecting and writing (seen at load
	// 14 on 2 cores) gets its HTTP connection tunnelled as opaque TCP, by
	// design for server-speaks-first protocols, and so bypasses the HTTP
	// handling (limits, identity header, metrics) tests assert on.
	// DetectTimeout sets another detection timeout.
	ClientsSpeakFirst bool
	DetectTimeout     time.Duration
	// MaxInFlight limits outbound requests in flight (0: the default);
	// ConnectTimeout bounds the wait for a peer connection and stream.
	MaxInFlight    int
	ConnectTimeout time.Duration
	// AppConnectTimeout bounds the inbound side's dial of the local app
	// (0: the default).
	AppConnectTimeout time.Duration
	// Resilience is its outbound failure policy (timeouts, retries,
	// breakers, failure accrual).
	Resilience outbound.Resilience

	Limits transport.Limits
	// InboundH3 makes its listener accept plain HTTP/3 clients too.
	InboundH3 bool
	// Logger receives the sidecar's logs (default testkit.DebugLogger).
	Logger *slog.Logger
}

// Sidecar is a running sidecar of the mesh.
type Sidecar struct {
	*sidecar.Sidecar
	Name string
	ID   string
	// Metrics is the sidecar's own Prometheus registry.
	Metrics *prometheus.Registry
	binds   map[string]string
}

// Start starts the sidecar called name, or a new one in place of a closed
// one of that name (say on the same Addr, to restart it). It is closed
// when the test ends.
func (m *Mesh) Start(name string, spec Spec) *Sidecar {
	m.t.Helper()
	deps, opts := m.config(spec)
	reg := prometheus.NewRegistry()
	deps.Metrics = telemetry.New(reg)
	sc, err := sidecar.Start(deps, opts)
	if err != nil {
		m.t.Fatalf("starting sidecar %q: %v", name, err)
	}
	m.t.Cleanup(func() { sc.Close() })
	s := &Sidecar{Sidecar: sc, Name: name, ID: spec.ID, Metrics: reg, binds: map[string]string{}}
	for _, b := range opts.Listeners.Binds {
		s.binds[b.Name] = sc.ListenerAddr(b.Name).String()
	}
	m.mu.Lock()
	m.sidecars[name] = s
	if len(spec.Routes) > 0 {
		id := spec.ID
		if spec.AdvertiseID != "" {
			id = spec.AdvertiseID
		}
		a := advert{ep: discovery.Endpoint{Addr: sc.InboundAddr().String(), Identity: id}}
		for svc := range spec.Routes {
			a.services = append(a.services, svc)
		}
		m.served[name] = a
	}
	m.publishLocked()
	m.mu.Unlock()
	return s
}

// config is the one place that turns a Spec into the sidecar's
// dependencies and options. Each bind's listener is named as the test
// names it (Bind.Name, default its service).
func (m *Mesh) config(spec Spec) (sidecar.Deps, sidecar.Options) {
	deps := sidecar.Deps{
		Identity:    spec.Identity,
		Resolver:    m.res,
		PacketConn:  spec.PacketConn,
		TCPListener: spec.TCPListener,
		DialTCP:     spec.DialTCP,
		Logger:      spec.Logger,
	}
	if deps.Identity == nil {
		deps.Identity = identitytest.Provider(m.t, m.CA, spec.ID)
	}
	if spec.Resolver != nil {
		deps.Resolver = spec.Resolver
	}
	if deps.Logger == nil {
		deps.Logger = testkit.DebugLogger()
	}
	opts := sidecar.Options{
		InboundAddr: spec.Addr,
		Limits:      spec.Limits,
		Inbound:     inbound.Options{HeaderTimeout: spec.HeaderTimeout, Authorization: spec.Authorization, ConnectTimeout: spec.AppConnectTimeout},
		Outbound:    outbound.Options{MaxInFlight: spec.MaxInFlight, ConnectTimeout: spec.ConnectTimeout, Resilience: spec.Resilience},
		Transport:   spec.Transport,
		Fallback:    spec.Fallback,
		InboundH3:   spec.InboundH3,
	}
	if opts.Transport == "" {
		opts.Transport = m.transport
	}
	if opts.InboundAddr == "" && spec.PacketConn == nil {
		opts.InboundAddr = "127.0.0.1:0"
	}
	if len(spec.Routes) > 0 {
		opts.Inbound.Routes = inbound.Routes(spec.Routes)
	}
	switch {
	case spec.DetectTimeout != 0:
		opts.Outbound.Detect = detect.Config{Timeout: spec.DetectTimeout}
	case spec.ClientsSpeakFirst:
		opts.Outbound.Detect = detect.Config{Timeout: time.Until(testkit.HangGuard(m.t))}
	}
	for _, b := range spec.Binds {
		name := b.Name
		if name == "" {
			name = b.Service
		}
		opts.Listeners.Binds = append(opts.Listeners.Binds, sidecar.Bind{Name: name, Listen: "127.0.0.1:0", Service: b.Service, Opaque: b.Opaque})
	}
	if spec.HTTPProxy {
		opts.Listeners.HTTPProxy = "127.0.0.1:0"
	}
	return deps, opts
}

// Resolve makes the mesh's resolver answer service with eps (none: a
// known service without endpoints), whatever sidecars advertise for it.
func (m *Mesh) Resolve(service string, eps ...discovery.Endpoint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.explicit[service] = slices.Clone(eps)
	if eps == nil {
		m.explicit[service] = []discovery.Endpoint{}
	}
	m.publishLocked()
}

// publishLocked sets the resolver's view: what Resolve said, else every
// sidecar advertising the service, in the order of their names.
func (m *Mesh) publishLocked() {
	all := map[string][]discovery.Endpoint{}
	names := make([]string, 0, len(m.served))
	for n := range m.served {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := m.served[n]
		for _, svc := range a.services {
			all[svc] = append(all[svc], a.ep)
		}
	}
	for svc, eps := range m.explicit {
		all[svc] = eps
	}
	m.res.Set(all)
}

// advert is a serving sidecar's entry in the resolver.
type advert struct {
	services []string
	ep       discovery.Endpoint
}

// Sidecar is the sidecar started as name.
func (m *Mesh) Sidecar(name string) *Sidecar {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sidecars[name]
	if !ok {
		m.t.Fatalf("meshtest: no sidecar %q", name)
	}
	return s
}

// Bind is the address of the outbound listener called name.
func (s *Sidecar) Bind(name string) string {
	a, ok := s.binds[name]
	if !ok {
		panic("meshtest: sidecar " + s.Name + " has no bind " + name)
	}
	return a
}

// ProxyURL is the URL of the HTTP proxy listener, for http.ProxyURL.
func (s *Sidecar) ProxyURL() *url.URL {
	return &url.URL{Scheme: "http", Host: s.HTTPProxyAddr().String()}
}

// MeshConns is how many peer connections its pools hold, over either
// transport.
func (s *Sidecar) MeshConns() int {
	n := s.Pool().Len()
	if p := s.TCPPool(); p != nil {
		n += p.Len()
	}
	return n
}

// Endpoint is where discovery finds this sidecar, as its own identity.
func (s *Sidecar) Endpoint() discovery.Endpoint {
	return discovery.Endpoint{Addr: s.InboundAddr().String(), Identity: s.ID}
}
