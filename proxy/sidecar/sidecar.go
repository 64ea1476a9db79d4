// Package sidecar assembles one quicmesh sidecar from its parts: the QUIC
// endpoint, the peer-connection pool, discovery, the inbound server and
// the outbound listeners. cmd/quicmesh builds a Config from flags and files;
// tests and the demo build it in code.
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
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/transport"
)

// Bind is one outbound listener dedicated to a service.
type Bind struct {
	Listen  string // local TCP address, e.g. 127.0.0.1:7001
	Service string
	// Opaque skips protocol detection: every connection is tunnelled as
	// TCP (use for server-speaks-first protocols to avoid the detect
	// timeout).
	Opaque bool
}

// Config describes a sidecar. Identity and Resolver are required.
type Config struct {
	Identity identity.Provider
	Resolver discovery.Resolver
	// Authorize decides which peers may call us; nil accepts our own
	// trust domain.
	Authorize identity.Authorizer

	// InboundAddr is the UDP address for mesh traffic (default
	// 0.0.0.0:4143). The same socket is used for outbound dials.
	InboundAddr string
	// PacketConn, if set, is the already-bound UDP socket for mesh
	// traffic and InboundAddr is ignored.
	PacketConn *net.UDPConn
	// QlogDir, if set, receives a qlog trace per QUIC connection.
	QlogDir string
	// Routes maps services this sidecar serves to local app addresses.
	Routes inbound.Routes
	// Binds are outbound listeners, one per service.
	Binds []Bind
	// HTTPProxyAddr is the outbound HTTP proxy listener (HTTP_PROXY
	// style: absolute-form URIs and CONNECT); empty disables it.
	HTTPProxyAddr string
	// Outbound tunes the outbound proxy (timeouts, detection, limits);
	// Discovery, Peers and Logger are filled in by Start.
	Outbound outbound.Config
	// Inbound tunes the inbound server (app connect timeout, header
	// timeout, limits); Listener, Routes and Logger are filled in by
	// Start.
	Inbound inbound.Config

	Limits transport.Limits
	Logger *slog.Logger
	// Metrics records golden metrics; nil creates a private registry.
	Metrics *telemetry.Metrics
}

// Sidecar is a running sidecar.
type Sidecar struct {
	cfg       Config
	log       *slog.Logger
	endpoint  *transport.Endpoint
	pool      *transport.Pool
	server    *transport.Server
	cache     *discovery.Cache
	inbound   *inbound.Server
	outbound  *outbound.Proxy
	listeners []net.Listener
	binds     []Bind

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start binds every listener and starts serving. Any bind or
// configuration failure is returned before anything is served.
func Start(cfg Config) (_ *Sidecar, err error) {
	if cfg.Identity == nil {
		return nil, errors.New("sidecar: no identity provider: refusing to start without mTLS")
	}
	if cfg.Resolver == nil {
		return nil, errors.New("sidecar: no discovery resolver")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.InboundAddr == "" {
		cfg.InboundAddr = "0.0.0.0:4143"
	}
	if _, err := cfg.Identity.Certificate(); err != nil {
		return nil, fmt.Errorf("sidecar: no usable identity: %w", err)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = telemetry.New(prometheus.NewRegistry())
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	s.endpoint, err = transport.Listen(cfg.InboundAddr, transport.Config{
		Identity:   cfg.Identity,
		Authorize:  cfg.Authorize,
		Limits:     cfg.Limits,
		Logger:     cfg.Logger,
		Observer:   cfg.Metrics.Handshakes(),
		PacketConn: cfg.PacketConn,
		QlogDir:    cfg.QlogDir,
	})
	if err != nil {
		return nil, err
	}
	s.pool = transport.NewPool(s.endpoint)
	s.cache = discovery.NewCache(cfg.Resolver, cfg.Logger)
	name := "unknown"
	if id, err := identity.LocalID(cfg.Identity); err == nil {
		name = id.String()
	}
	ocfg := cfg.Outbound
	ocfg.Discovery, ocfg.Peers, ocfg.Logger, ocfg.Name, ocfg.Metrics = s.cache, quicPeers{s.pool}, cfg.Logger.With("dir", "outbound"), name, cfg.Metrics
	s.outbound = outbound.New(ocfg)
	for svc, v := range cfg.Routes {
		if _, _, err := inbound.ParseAppAddr(v); err != nil {
			return nil, fmt.Errorf("sidecar: route for %q: %w", svc, err)
		}
	}
	icfg := cfg.Inbound
	icfg.Routes, icfg.Logger, icfg.Name, icfg.Metrics = cfg.Routes, cfg.Logger.With("dir", "inbound"), name, cfg.Metrics
	icfg = icfg.WithDefaults()
	s.server = transport.NewServer(s.endpoint, transport.ServerConfig{
		HeaderTimeout:  icfg.HeaderTimeout,
		MaxHeaderBytes: icfg.MaxHeaderBytes,
		Logger:         icfg.Logger,
	})
	icfg.Listener = quicListener{s.server}
	s.inbound = inbound.New(icfg)
	cfg.Metrics.AddQUICSource(quicStats(telemetry.Outbound, s.pool.QUICStats))
	cfg.Metrics.AddQUICSource(quicStats(telemetry.Inbound, s.server.QUICStats))

	binds := cfg.Binds
	if cfg.HTTPProxyAddr != "" {
		binds = append(binds[:len(binds):len(binds)], Bind{Listen: cfg.HTTPProxyAddr})
	}
	for _, b := range binds {
		ln, err := net.Listen("tcp", b.Listen)
		if err != nil {
			if b.Service == "" {
				return nil, fmt.Errorf("sidecar: outbound HTTP proxy listener: %w", err)
			}
			return nil, fmt.Errorf("sidecar: outbound listener for %q: %w", b.Service, err)
		}
		s.listeners = append(s.listeners, ln)
	}
	s.binds = binds

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
	for i, ln := range s.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.outbound.Serve(ln, binds[i].Service, binds[i].Opaque); err != nil {
				s.log.Error("outbound listener stopped", "listen", ln.Addr().String(), "error", err)
			}
		}()
	}
	s.log.Info("sidecar started", "inbound", s.endpoint.Addr().String(), "binds", len(cfg.Binds), "routes", len(cfg.Routes))
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
	if cfg.QlogDir != "" {
		s.log.Info("writing qlog traces", "dir", cfg.QlogDir)
	}
	return s, nil
}

// InboundAddr is the bound UDP address for mesh traffic.
func (s *Sidecar) InboundAddr() *net.UDPAddr { return s.endpoint.Addr() }

// BindAddr is the bound address of the i-th outbound listener.
func (s *Sidecar) BindAddr(i int) net.Addr { return s.listeners[i].Addr() }

// HTTPProxyAddr is the bound address of the HTTP proxy listener, nil if
// disabled.
func (s *Sidecar) HTTPProxyAddr() net.Addr {
	if s.cfg.HTTPProxyAddr == "" {
		return nil
	}
	return s.listeners[len(s.listeners)-1].Addr()
}

// Pool exposes the peer pool (for tests and metrics).
func (s *Sidecar) Pool() *transport.Pool { return s.pool }

// Limits returns the effective QUIC limits (defaults filled in).
func (s *Sidecar) Limits() transport.Limits { return s.endpoint.Limits() }

// watchCertExpiry keeps the certificate expiry gauge current across
// rotations.
func (s *Sidecar) watchCertExpiry(ctx context.Context) {
	for {
		changed := s.cfg.Identity.Changed()
		if cert, err := s.cfg.Identity.Certificate(); err == nil && cert.Leaf != nil {
			s.cfg.Metrics.SetCertExpiry(cert.Leaf.NotAfter)
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
	for _, ln := range s.listeners {
		ln.Close()
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
		for _, ln := range s.listeners {
			ln.Close()
		}
		if s.outbound != nil {
			s.outbound.Close()
		}
		if s.inbound != nil {
			s.inbound.Close()
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
