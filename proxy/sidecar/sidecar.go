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

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
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
	// Routes maps services this sidecar serves to local app addresses.
	Routes inbound.Routes
	// Binds are outbound listeners, one per service.
	Binds []Bind
	// HTTPProxyAddr is the outbound HTTP proxy listener (HTTP_PROXY
	// style: absolute-form URIs and CONNECT); empty disables it.
	HTTPProxyAddr string
	// Outbound tunes the outbound proxy (timeouts, detection, limits);
	// Discovery, Pool and Logger are filled in by Start.
	Outbound outbound.Config

	Limits transport.Limits
	Logger *slog.Logger
}

// Sidecar is a running sidecar.
type Sidecar struct {
	cfg       Config
	log       *slog.Logger
	endpoint  *transport.Endpoint
	pool      *transport.Pool
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
	s := &Sidecar{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	s.endpoint, err = transport.Listen(cfg.InboundAddr, transport.Config{
		Identity:  cfg.Identity,
		Authorize: cfg.Authorize,
		Limits:    cfg.Limits,
		Logger:    cfg.Logger,
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
	ocfg.Discovery, ocfg.Pool, ocfg.Logger, ocfg.Name = s.cache, s.pool, cfg.Logger.With("dir", "outbound"), name
	s.outbound = outbound.New(ocfg)
	for svc, v := range cfg.Routes {
		if _, _, err := inbound.ParseAppAddr(v); err != nil {
			return nil, fmt.Errorf("sidecar: route for %q: %w", svc, err)
		}
	}
	s.inbound = inbound.New(inbound.Config{Endpoint: s.endpoint, Routes: cfg.Routes, Logger: cfg.Logger.With("dir", "inbound"), Name: name})

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
