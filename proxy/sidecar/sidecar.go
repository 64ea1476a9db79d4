// Package sidecar assembles one quicmesh sidecar from its parts: the QUIC
// endpoint, the peer-connection pool, discovery, the inbound server and
// the outbound listeners. Start takes its dependencies (Deps) and what to
// build (Options) apart: cmd/quicmesh builds both from flags and files;
// tests (internal/testkit/meshtest) and the demo build them in code.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/transport"
)

// Deps are what a sidecar is given and uses without owning: neither Start
// nor Close closes them (an Upstream only drops its idle connections when
// the sidecar closes, as its contract says), except PacketConn, which is
// handed over. Identity and Resolver are required.
type Deps struct {
	Identity identity.Provider
	Resolver discovery.Resolver
	// Authorize decides which peers may connect; nil accepts our own
	// trust domain.
	Authorize identity.Authorizer
	// PacketConn, if set, is the already-bound UDP socket for mesh
	// traffic, in place of Options.InboundAddr (setting both is an
	// error). Start takes it over: the sidecar closes it, or Start does
	// if it fails.
	PacketConn *net.UDPConn
	// Upstream is where the inbound side delivers routed traffic; nil is
	// the apps on this host (inbound.LocalApps). A gateway plugs in
	// another cluster's endpoints here.
	Upstream inbound.Upstream
	// Logger receives the sidecar's logs; nil discards them.
	Logger *slog.Logger
	// Metrics records golden metrics; nil creates a private registry.
	Metrics *telemetry.Metrics
}

// Options shape what Start builds; the zero value is a sidecar on the
// default mesh port with no routes and no listeners.
type Options struct {
	// InboundAddr is the UDP address for mesh traffic (default
	// 0.0.0.0:4143). The same socket is used for outbound dials.
	InboundAddr string
	// Listeners are the app-facing listeners, each with a name.
	Listeners Listeners
	// Inbound tunes the inbound server and carries its routes: the
	// services this sidecar serves and their local apps.
	Inbound inbound.Options
	// Outbound tunes the outbound proxy (timeouts, detection, limits).
	Outbound outbound.Options
	Limits   transport.Limits
	// QlogDir, if set, receives a qlog trace per QUIC connection.
	QlogDir string
}

// Listeners are a sidecar's app-facing TCP listeners. Each has a name,
// unique in the sidecar, that its bind errors carry and that finds its
// bound address (Sidecar.ListenerAddr).
type Listeners struct {
	// HTTPProxy is the outbound HTTP proxy listener (HTTP_PROXY style:
	// absolute-form URIs and CONNECT), named HTTPProxyListener; empty
	// disables it.
	HTTPProxy string
	// Binds are outbound listeners, each dedicated to a service.
	Binds []Bind
	// Transparent is the transparent outbound listener, named
	// TransparentListener: quicmesh init redirects the pod's outbound TCP
	// to it (127.0.0.1:4145). Empty disables it. It needs a resolver that
	// is a discovery.Catalog (a static file, a control plane).
	Transparent string
	// PlainInbound is the listener for plain TCP from outside the mesh,
	// named PlainInboundListener: init redirects the pod's inbound TCP to
	// it (0.0.0.0:4146). Empty disables it.
	PlainInbound string
	// PlainPolicy is what PlainInbound does with a connection: deliver it
	// (permissive, the default) or refuse it (strict).
	PlainPolicy inbound.PlainPolicy
}

// Names of the transparent path's listeners.
const (
	TransparentListener  = "transparent"
	PlainInboundListener = "plain-inbound"
)

// HTTPProxyListener is the name of the HTTP proxy listener.
const HTTPProxyListener = "http-proxy"

// Bind is one outbound listener dedicated to a service.
type Bind struct {
	// Name is the listener's name; default "bind LISTEN=SERVICE".
	Name    string
	Listen  string // local TCP address, e.g. 127.0.0.1:7001
	Service string
	// Opaque skips protocol detection: every connection is tunnelled as
	// TCP (use for server-speaks-first protocols to avoid the detect
	// timeout).
	Opaque bool
}

// listenerName is b's name, its default filled in.
func (b Bind) listenerName() string {
	if b.Name != "" {
		return b.Name
	}
	return "bind " + b.Listen + "=" + b.Service
}

// listenerSpec is one app-facing listener to bind: what serves its
// connections and under which name.
type listenerSpec struct {
	name, addr string
	// service and opaque are what the outbound proxy serves it with;
	// service "" is the HTTP proxy (routed by each request's host).
	service string
	opaque  bool
	kind    listenerKind
}

// specs lists the listeners to bind, checking that their names are
// unique and their services set.
func (l Listeners) specs() ([]listenerSpec, error) {
	var specs []listenerSpec
	if l.HTTPProxy != "" {
		specs = append(specs, listenerSpec{name: HTTPProxyListener, addr: l.HTTPProxy})
	}
	for _, b := range l.Binds {
		if b.Service == "" {
			return nil, fmt.Errorf("sidecar: listener %q (%s): no service", b.listenerName(), b.Listen)
		}
		specs = append(specs, listenerSpec{name: b.listenerName(), addr: b.Listen, service: b.Service, opaque: b.Opaque})
	}
	if l.Transparent != "" {
		specs = append(specs, listenerSpec{name: TransparentListener, addr: l.Transparent, kind: kindTransparent})
	}
	if l.PlainInbound != "" {
		specs = append(specs, listenerSpec{name: PlainInboundListener, addr: l.PlainInbound, kind: kindPlain})
	}
	if _, err := inbound.ParsePlainPolicy(string(l.PlainPolicy)); err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	seen := map[string]bool{}
	for _, sp := range specs {
		if seen[sp.name] {
			return nil, fmt.Errorf("sidecar: two listeners named %q", sp.name)
		}
		seen[sp.name] = true
	}
	return specs, nil
}

// check finds what Start cannot work with, before anything is opened,
// and returns the listeners to bind.
func check(deps Deps, opts Options) ([]listenerSpec, error) {
	if deps.Identity == nil {
		return nil, errors.New("sidecar: no identity provider: refusing to start without mTLS")
	}
	if deps.Resolver == nil {
		return nil, errors.New("sidecar: no discovery resolver")
	}
	if deps.PacketConn != nil && opts.InboundAddr != "" {
		return nil, fmt.Errorf("sidecar: both a UDP socket and an inbound address (%s) given: use one", opts.InboundAddr)
	}
	if _, ok := deps.Resolver.(discovery.Catalog); opts.Listeners.Transparent != "" && !ok {
		return nil, fmt.Errorf("sidecar: listener %q (%s): the discovery knows no addresses (use a static file or a control plane)", TransparentListener, opts.Listeners.Transparent)
	}
	return opts.Listeners.specs()
}

// boundListener is a bound app-facing listener.
type boundListener struct {
	listenerSpec
	ln net.Listener
}

// Sidecar is a running sidecar.
type Sidecar struct {
	deps      Deps
	log       *slog.Logger
	endpoint  *transport.Endpoint
	pool      *transport.Pool
	server    *transport.Server
	cache     *discovery.Cache
	inbound   *inbound.Server
	outbound  *outbound.Proxy
	listeners []boundListener
	index     *discovery.Index
	plain     *inbound.PlainServer

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start binds every listener and starts serving. Any bind or
// configuration failure is returned before anything is served. What deps
// holds stays the caller's (see Deps).
func Start(deps Deps, opts Options) (_ *Sidecar, err error) {
	if deps.PacketConn != nil {
		defer func() {
			if err != nil {
				deps.PacketConn.Close()
			}
		}()
	}
	specs, err := check(deps, opts)
	if err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.PacketConn == nil && opts.InboundAddr == "" {
		opts.InboundAddr = "0.0.0.0:4143"
	}
	if _, err := deps.Identity.Certificate(); err != nil {
		return nil, fmt.Errorf("sidecar: no usable identity: %w", err)
	}
	if deps.Metrics == nil {
		deps.Metrics = telemetry.New(prometheus.NewRegistry())
	}
	s := &Sidecar{deps: deps, log: deps.Logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	s.endpoint, err = transport.Listen(opts.InboundAddr, transport.Config{
		Identity:   deps.Identity,
		Authorize:  deps.Authorize,
		Limits:     opts.Limits,
		Logger:     deps.Logger,
		Observer:   deps.Metrics.Handshakes(),
		PacketConn: deps.PacketConn,
		QlogDir:    opts.QlogDir,
	})
	if err != nil {
		return nil, err
	}
	s.pool = transport.NewPool(s.endpoint)
	s.cache = discovery.NewCache(deps.Resolver, deps.Logger)
	name := "unknown"
	if id, err := identity.LocalID(deps.Identity); err == nil {
		name = id.String()
	}
	s.outbound = outbound.New(outbound.Config{
		Discovery: s.cache,
		Peers:     quicPeers{s.pool},
		Logger:    deps.Logger.With("dir", "outbound"),
		Name:      name,
		Metrics:   deps.Metrics,
		Options:   opts.Outbound,
	})
	inOpts := opts.Inbound.WithDefaults()
	inLog := deps.Logger.With("dir", "inbound")
	s.server = transport.NewServer(s.endpoint, transport.ServerConfig{
		HeaderTimeout:  inOpts.HeaderTimeout,
		MaxHeaderBytes: inOpts.MaxHeaderBytes,
		Logger:         inLog,
	})
	s.inbound, err = inbound.New(inbound.Config{
		Listener: quicListener{s.server},
		Upstream: deps.Upstream,
		Logger:   inLog,
		Name:     name,
		Metrics:  deps.Metrics,
		Options:  inOpts,
	})
	if err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	// The transport's verdicts on a peer (a failed dial, a connection
	// whose peer stopped answering) eject it from balancing at once.
	s.pool.OnPeerFailure(func(f transport.PeerFailure) { s.outbound.PeerFailed(f.Addr, f.Peer, f.Reason) })
	deps.Metrics.AddQUICSource(quicStats(telemetry.Outbound, s.pool.QUICStats))
	deps.Metrics.AddQUICSource(quicStats(telemetry.Inbound, s.server.QUICStats))

	for _, sp := range specs {
		ln, err := net.Listen("tcp", sp.addr)
		if err != nil {
			return nil, fmt.Errorf("sidecar: listener %q: %w", sp.name, err)
		}
		s.listeners = append(s.listeners, boundListener{listenerSpec: sp, ln: ln})
	}

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watchCertExpiry(ctx)
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.inbound.Serve(ctx); err != nil {
			s.log.Error("inbound server stopped", "error", err)
		}
	}()
	if err := s.startTransparent(ctx, opts); err != nil {
		return nil, err
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.serveListener(l); err != nil {
				s.log.Error("outbound listener stopped", "listener", l.name, "listen", l.ln.Addr().String(), "error", err)
			}
		}()
	}
	s.log.Info("sidecar started", "inbound", s.endpoint.Addr().String(), "binds", len(opts.Listeners.Binds), "routes", len(opts.Inbound.Routes),
		"authorization", s.inbound.Authorization().String())
	if info, err := s.endpoint.SocketInfo(); err == nil {
		level := slog.LevelInfo
		if info.RecvBuffer < transport.WantBufferBytes || info.SendBuffer < transport.WantBufferBytes {
			// Not fatal, but high-throughput bursts will be dropped by the
			// kernel; raise net.core.rmem_max/wmem_max or run with
			// CAP_NET_ADMIN so the buffers can be forced.
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "udp socket", "recv_buffer_kib", info.RecvBuffer>>10, "send_buffer_kib", info.SendBuffer>>10, "wanted_kib", transport.WantBufferBytes>>10, "gso", info.GSO)
	}
	if opts.QlogDir != "" {
		s.log.Info("writing qlog traces", "dir", opts.QlogDir)
	}
	return s, nil
}

// SetAuthorization puts a new inbound authorization policy in force
// without a restart: requests and tunnels that reach the policy check
// from now on are judged by it; tunnels already open stay open. A policy
// naming a route the sidecar does not serve is refused and the one in
// force stays.
func (s *Sidecar) SetAuthorization(p *authz.Policy) error {
	if err := s.inbound.SetAuthorization(p); err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	s.log.Info("authorization policy in force", "policy", p.String())
	return nil
}

// Authorization is the inbound authorization policy in force.
func (s *Sidecar) Authorization() *authz.Policy { return s.inbound.Authorization() }

// InboundAddr is the bound UDP address for mesh traffic.
func (s *Sidecar) InboundAddr() *net.UDPAddr { return s.endpoint.Addr() }

// ListenerAddr is the bound address of the listener called name, nil if
// there is none.
func (s *Sidecar) ListenerAddr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// HTTPProxyAddr is the bound address of the HTTP proxy listener, nil if
// disabled.
func (s *Sidecar) HTTPProxyAddr() net.Addr { return s.ListenerAddr(HTTPProxyListener) }

// Pool exposes the peer pool (for tests and metrics).
func (s *Sidecar) Pool() *transport.Pool { return s.pool }

// Limits returns the effective QUIC limits (defaults filled in).
func (s *Sidecar) Limits() transport.Limits { return s.endpoint.Limits() }

// watchCertExpiry keeps the certificate expiry gauge current across
// rotations.
func (s *Sidecar) watchCertExpiry(ctx context.Context) {
	for {
		changed := s.deps.Identity.Changed()
		if cert, err := s.deps.Identity.Certificate(); err == nil && cert.Leaf != nil {
			s.deps.Metrics.SetCertExpiry(cert.Leaf.NotAfter)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// DefaultGrace is how long a draining sidecar lets in-flight requests and
// tunnels finish unless configured otherwise (quicmesh proxy --grace).
const DefaultGrace = 30 * time.Second

// Shutdown drains the sidecar: it stops accepting app connections and
// peer connections, tells connected peers to go away so they send new
// work to other endpoints, lets in-flight requests and tunnels finish
// until ctx ends, then closes everything.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.log.Info("draining")
	for _, l := range s.listeners {
		l.ln.Close()
	}
	var wg sync.WaitGroup
	// Closing the QUIC listener waits for handshakes in flight; peers must
	// hear our GOAWAY without waiting for that.
	wg.Add(3)
	go func() { defer wg.Done(); s.endpoint.StopListening() }()
	go func() { defer wg.Done(); s.inbound.Shutdown(ctx) }()
	go func() { defer wg.Done(); s.outbound.Shutdown(ctx) }()
	wg.Wait()
	err := ctx.Err()
	s.Close()
	if err != nil {
		return fmt.Errorf("sidecar: grace period ended with work in flight: %w", err)
	}
	return nil
}

// Close stops everything immediately: listeners, app connections, peer
// connections, the UDP socket.
func (s *Sidecar) Close() error {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		for _, l := range s.listeners {
			l.ln.Close()
		}
		if s.outbound != nil {
			s.outbound.Close()
		}
		if s.inbound != nil {
			s.inbound.Close()
		}
		if s.plain != nil {
			s.plain.Close()
		}
		if s.pool != nil {
			s.pool.Close()
		}
		if s.cache != nil {
			s.cache.Close()
		}
		if s.endpoint != nil {
			s.endpoint.Close()
		}
		s.wg.Wait()
	})
	return nil
}
