// Package outbound is the application-facing side of a sidecar: it accepts
// the local app's connections, finds the service's peers through
// discovery, and carries the traffic to one of them over the shared QUIC
// connection.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/proxy/balance"
	"github.com/quicmesh/quicmesh/transport"
)

// Endpoints is what the outbound proxy needs from discovery: the current
// endpoint set of a service (discovery.Cache implements it).
type Endpoints interface {
	Endpoints(ctx context.Context, service string) ([]discovery.Endpoint, error)
}

// Config wires an outbound proxy.
type Config struct {
	Discovery Endpoints
	Pool      *transport.Pool
	Logger    *slog.Logger
	// ConnectTimeout bounds discovery, peer connection and stream opening
	// for one app connection or request. Default 5s.
	ConnectTimeout time.Duration
	// MaxAttempts is how many distinct endpoints are tried before the app
	// gets an error. Default 3.
	MaxAttempts int
}

// Proxy forwards app traffic to services.
type Proxy struct {
	cfg      Config
	balancer *balance.Balancer
	log      *slog.Logger

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// New returns an outbound proxy.
func New(cfg Config) *Proxy {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 3
	}
	return &Proxy{cfg: cfg, balancer: balance.New(), log: cfg.Logger, conns: make(map[net.Conn]struct{})}
}

// ErrNoRoute is wrapped when no endpoint of a service could be reached.
var ErrNoRoute = errors.New("outbound: no reachable endpoint")

// Connect picks an endpoint of service and returns the shared connection
// to it. Endpoints whose peer cannot be reached are skipped, up to
// MaxAttempts. done must be called when the work on the connection ends.
func (p *Proxy) Connect(ctx context.Context, service string) (*transport.PeerConn, func(ok bool), error) {
	eps, err := p.cfg.Discovery.Endpoints(ctx, service)
	if err != nil {
		return nil, nil, fmt.Errorf("outbound: resolving %q: %w", service, err)
	}
	tried := make(map[string]bool, p.cfg.MaxAttempts)
	var lastErr error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		ep, done, ok := p.balancer.Pick(eps, func(e discovery.Endpoint) bool { return tried[e.Key()] })
		if !ok {
			break
		}
		tried[ep.Key()] = true
		id, err := identity.ParseID(ep.Identity)
		if err != nil {
			done(false)
			lastErr = fmt.Errorf("endpoint %s has an invalid identity: %w", ep.Addr, err)
			continue
		}
		pc, err := p.cfg.Pool.Get(ctx, ep.Addr, id)
		if err != nil {
			done(false)
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		return pc, done, nil
	}
	if lastErr == nil {
		lastErr = discovery.ErrNoEndpoints
	}
	return nil, nil, fmt.Errorf("%w for %q: %w", ErrNoRoute, service, lastErr)
}

// ServeTCP accepts app connections on ln and tunnels each to service,
// until ln is closed.
func (p *Proxy) ServeTCP(ln net.Listener, service string) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("outbound: accepting on %s: %w", ln.Addr(), err)
		}
		if !p.track(conn) {
			conn.Close()
			continue
		}
		go func() {
			defer p.untrack(conn)
			p.ForwardTCP(conn, service, service)
		}()
	}
}

// ForwardTCP tunnels one app connection to service, addressing target in
// the tunnel header. Errors reset the app's connection: a client is never
// left hanging on a connection that will not carry data.
func (p *Proxy) ForwardTCP(conn net.Conn, service, target string) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	pc, done, err := p.Connect(ctx, service)
	if err != nil {
		cancel()
		p.log.Warn("tcp forward failed", "service", service, "client", conn.RemoteAddr().String(), "error", err)
		resetConn(conn)
		return
	}
	str, err := pc.OpenTunnel(ctx, target)
	cancel()
	if err != nil {
		done(false)
		p.cfg.Pool.Forget(pc)
		p.log.Warn("opening tunnel failed", "service", service, "peer", pc.Addr, "error", err)
		resetConn(conn)
		return
	}
	res := transport.Splice(conn, str)
	done(res.Err == nil)
	p.log.Debug("tcp tunnel closed", "service", service, "peer", pc.Addr, "sent", res.Sent, "received", res.Received, "error", res.Err)
}

func resetConn(conn net.Conn) {
	if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// Close resets every open app connection and waits for their goroutines.
// Closing the listeners is the caller's job.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closing = true
	for c := range p.conns {
		resetConn(c)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// Wait blocks until every tracked connection has finished or ctx ends;
// used for graceful drains.
func (p *Proxy) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
