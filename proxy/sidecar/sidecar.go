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
	"strings"
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
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/h2tcp"
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
	// TCPListener, if set, is the already-bound TCP listener for the TCP
	// transport's inbound side, in place of binding the UDP socket's
	// address over TCP. Start takes it over like PacketConn.
	TCPListener net.Listener
	// DialTCP, if set, opens the TCP transport's connections to peers
	// (default: net.Dialer); tests dial from a network namespace.
	DialTCP func(ctx context.Context, addr string) (net.Conn, error)
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
	// Transport is the mesh transport policy (docs/operations.md):
	// fallback.Auto (default) serves QUIC and TCP on the same port
	// number and reaches each peer over QUIC, falling back to TCP per
	// peer when QUIC is blocked; fallback.QUIC serves and dials QUIC
	// only; fallback.TCP serves and dials only HTTP/2 over TLS over TCP
	// (the UDP socket is bound but never answers).
	Transport fallback.Mode
	// Fallback tunes the auto policy; zero fields take the defaults.
	Fallback Fallback
	// QlogDir, if set, receives a qlog trace per QUIC connection.
	QlogDir string
	// InboundH3: the QUIC listener also accepts plain HTTP/3 clients
	// (ALPN "h3") that present a mesh certificate, routed by :authority
	// through the same identity checks and authorization policy as
	// sidecars' requests (docs/design.md, "Standard HTTP/3 at the edge").
	// Off by default.
	InboundH3 bool
}

// Fallback tunes the per-peer choice between QUIC and TCP (see
// transport/fallback for the defaults).
type Fallback struct {
	// RaceDelay is QUIC's head start on first contact with a peer.
	RaceDelay time.Duration
	// ReprobeMin and ReprobeMax bound the back-off between QUIC probes
	// of a peer using TCP because QUIC failed.
	ReprobeMin, ReprobeMax time.Duration
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
	if _, err := fallback.ParseMode(string(opts.Transport)); err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
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
	server    *transport.Server // nil in TCP-only mode
	tcpLn     *h2tcp.Listener   // nil in QUIC-only mode
	tcpPool   *h2tcp.Pool       // nil in QUIC-only mode
	peers     *fallback.Peers[outbound.PeerConn]
	inbounds  *listeners
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
	if deps.TCPListener != nil {
		defer func() {
			if err != nil {
				deps.TCPListener.Close()
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

	mode, _ := fallback.ParseMode(string(opts.Transport))
	tcpLn, err := s.bindMesh(deps, opts, mode)
	if err != nil {
		return nil, err
	}
	s.pool = transport.NewPool(s.endpoint)
	tcpCfg := h2tcp.Config{
		Identity:  deps.Identity,
		Authorize: deps.Authorize,
		Limits:    opts.Limits,
		Logger:    deps.Logger,
		Observer:  deps.Metrics.Handshakes(),
		Dial:      deps.DialTCP,
	}
	if mode != fallback.QUIC {
		if s.tcpPool, err = h2tcp.NewPool(tcpCfg); err != nil {
			return nil, fmt.Errorf("sidecar: %w", err)
		}
	}
	s.peers = fallback.New[outbound.PeerConn](quicDialer{s.pool}, tcpDialer{s.tcpPool}, fallback.Config{
		Mode:       mode,
		RaceDelay:  opts.Fallback.RaceDelay,
		ReprobeMin: opts.Fallback.ReprobeMin,
		ReprobeMax: opts.Fallback.ReprobeMax,
		Logger:     deps.Logger.With("dir", "outbound"),
		Observer:   fallbackObserver{deps.Metrics},
	})
	s.cache = discovery.NewCache(deps.Resolver, deps.Logger)
	name := "unknown"
	if id, err := identity.LocalID(deps.Identity); err == nil {
		name = id.String()
	}
	s.outbound = outbound.New(outbound.Config{
		Discovery: s.cache,
		Peers:     meshPeers{fb: s.peers, log: deps.Logger.With("dir", "outbound")},
		Logger:    deps.Logger.With("dir", "outbound"),
		Name:      name,
		Metrics:   deps.Metrics,
		Options:   opts.Outbound,
	})
	inOpts := opts.Inbound.WithDefaults()
	inLog := deps.Logger.With("dir", "inbound")
	var ins []inbound.Listener
	if mode != fallback.TCP {
		s.server = transport.NewServer(s.endpoint, transport.ServerConfig{
			HeaderTimeout:  inOpts.HeaderTimeout,
			MaxHeaderBytes: inOpts.MaxHeaderBytes,
			Logger:         inLog,
		})
		ins = append(ins, quicListener{s.server})
		deps.Metrics.AddQUICSource(quicStats(telemetry.Inbound, s.server.QUICStats))
		deps.Metrics.AddConnSource(telemetry.Inbound, string(fallback.OverQUIC), func() int { return len(s.server.QUICStats()) })
	}
	if tcpLn != nil {
		tcpCfg.Logger = inLog
		if s.tcpLn, err = h2tcp.Listen(tcpLn, tcpCfg, h2tcp.ServerConfig{HeaderTimeout: inOpts.HeaderTimeout, MaxHeaderBytes: inOpts.MaxHeaderBytes}); err != nil {
			tcpLn.Close()
			return nil, fmt.Errorf("sidecar: %w", err)
		}
		ins = append(ins, tcpListener{s.tcpLn})
		deps.Metrics.AddConnSource(telemetry.Inbound, string(fallback.OverTCP), func() int { return len(s.tcpLn.Stats()) })
	}
	s.inbounds = newListeners(inLog, ins...)
	s.inbound, err = inbound.New(inbound.Config{
		Listener: s.inbounds,
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
	// In auto mode too: a peer whose QUIC path failed may be reachable
	// over TCP, but until the fallback has switched it the endpoint is
	// ejected for the back-off (still picked if nothing else is left, and
	// re-probed), so requests do not wait on a path that just failed.
	s.pool.OnPeerFailure(func(f transport.PeerFailure) { s.outbound.PeerFailed(f.Addr, f.Peer, f.Reason) })
	if s.tcpPool != nil {
		s.tcpPool.OnPeerFailure(func(f transport.PeerFailure) { s.outbound.PeerFailed(f.Addr, f.Peer, f.Reason) })
	}
	deps.Metrics.AddQUICSource(quicStats(telemetry.Outbound, s.pool.QUICStats))
	deps.Metrics.AddConnSource(telemetry.Outbound, string(fallback.OverQUIC), s.pool.Len)
	deps.Metrics.AddLivenessSource(string(fallback.OverQUIC), func() telemetry.LivenessCounts {
		st := s.pool.LivenessStats()
		return telemetry.LivenessCounts{Unresponsive: st.Declared - st.Unreachable, Unreachable: st.Unreachable, Pings: st.Pings, Probes: st.Probes, Starved: st.Starved}
	})
	if s.tcpPool != nil {
		deps.Metrics.AddConnSource(telemetry.Outbound, string(fallback.OverTCP), s.tcpPool.Len)
		deps.Metrics.AddLivenessSource(string(fallback.OverTCP), func() telemetry.LivenessCounts {
			st := s.tcpPool.LivenessStats()
			return telemetry.LivenessCounts{Unresponsive: st.Declared, Pings: st.Pings, Starved: st.Starved}
		})
	}

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
	tcpAddr := "off"
	if s.tcpLn != nil {
		tcpAddr = s.tcpLn.Addr().String()
	}
	s.log.Info("sidecar started", "inbound", s.endpoint.Addr().String(), "inbound_tcp", tcpAddr, "transport", mode, "binds", len(opts.Listeners.Binds), "routes", len(opts.Inbound.Routes),
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

// InboundTCPAddr is the bound TCP address of the TCP transport, nil in
// QUIC-only mode.
func (s *Sidecar) InboundTCPAddr() net.Addr {
	if s.tcpLn == nil {
		return nil
	}
	return s.tcpLn.Addr()
}

// TCPPool exposes the TCP transport's pool (nil in QUIC-only mode), for
// tests and metrics.
func (s *Sidecar) TCPPool() *h2tcp.Pool { return s.tcpPool }

// QUICBlocked reports whether the fallback policy uses TCP for the peer
// at addr with identity want because QUIC failed.
func (s *Sidecar) QUICBlocked(addr string, want identity.ID) bool { return s.peers.Blocked(addr, want) }

// bindMesh binds the mesh sockets: the UDP one (listening for QUIC unless
// the mode is TCP-only, where it only reserves the address) and, unless
// the mode is QUIC-only, the TCP listener on the same IP and port number.
// An ephemeral UDP port whose number is taken over TCP is bound again.
func (s *Sidecar) bindMesh(deps Deps, opts Options, mode fallback.Mode) (net.Listener, error) {
	cfg := transport.Config{
		Identity:   deps.Identity,
		Authorize:  deps.Authorize,
		Limits:     opts.Limits,
		Logger:     deps.Logger,
		Observer:   deps.Metrics.Handshakes(),
		PacketConn: deps.PacketConn,
		QlogDir:    opts.QlogDir,
		AcceptH3:   opts.InboundH3,
	}
	bind := transport.Listen
	if mode == fallback.TCP {
		bind = transport.NewDialer
	}
	for attempt := 0; ; attempt++ {
		ep, err := bind(opts.InboundAddr, cfg)
		if err != nil {
			return nil, err
		}
		switch {
		case mode == fallback.QUIC:
			s.endpoint = ep
			if deps.TCPListener != nil {
				deps.TCPListener.Close()
			}
			return nil, nil
		case deps.TCPListener != nil:
			s.endpoint = ep
			return deps.TCPListener, nil
		}
		ln, err := net.Listen("tcp", ep.Addr().String())
		if err == nil {
			s.endpoint = ep
			return ln, nil
		}
		ep.Close()
		ephemeral := deps.PacketConn == nil && strings.HasSuffix(opts.InboundAddr, ":0")
		if !ephemeral || attempt >= 20 {
			return nil, fmt.Errorf("sidecar: binding the TCP transport on the UDP port %s: %w", ep.Addr(), err)
		}
	}
}

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
	go func() {
		defer wg.Done()
		s.endpoint.StopListening()
		if s.tcpLn != nil {
			s.tcpLn.StopListening()
		}
	}()
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
		if s.tcpPool != nil {
			s.tcpPool.Close()
		}
		if s.peers != nil {
			s.peers.Close()
		}
		if s.tcpLn != nil {
			s.tcpLn.Close()
		}
		if s.inbounds != nil {
			s.inbounds.close()
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
