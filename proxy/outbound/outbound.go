// Package outbound is the application-facing side of a sidecar: it accepts
// the local app's connections, finds the service's peers through
// discovery, and carries the traffic to one of them over the connection
// to that peer a transport (Peers) shares.
//
// Each unit of work walks a short chain of layers, each a type with one
// job; chain.go sets their order in one place.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Endpoints is what the outbound proxy needs from discovery: the current
// endpoint set of a service (discovery.Cache implements it). A set that
// is returned again unchanged (the same slice) is not parsed again.
type Endpoints interface {
	Endpoints(ctx context.Context, service string) ([]discovery.Endpoint, error)
}

// Peers hands out connections to peer sidecars; a transport's pool
// implements it, keeping one connection per peer.
type Peers interface {
	// Get returns the connection to the peer at addr that must prove
	// identity want, dialing it if needed. A peer that cannot be reached
	// gives an error wrapping meshcode.ErrPeerUnavailable.
	Get(ctx context.Context, addr string, want identity.ID) (PeerConn, error)
	// Unavailable reports whether the peer is in back-off after a
	// failed dial or a drain notice.
	Unavailable(addr string, want identity.ID) bool
}

// PeerConn is a connection to a peer sidecar, shared by all the work sent
// to that peer.
type PeerConn interface {
	// Addr is the peer's address; Peer the identity it proved.
	Addr() string
	Peer() identity.ID
	// RoundTrip sends an HTTP request to the peer. Errors proving the
	// peer did not process it are marked meshcode.ErrNotProcessed, those
	// proving the connection dead meshcode.ErrConnDead.
	RoundTrip(*http.Request) (*http.Response, error)
	// OpenTunnel opens a tunnel stream to target; its errors are marked
	// as RoundTrip's are.
	OpenTunnel(ctx context.Context, target string) (TunnelStream, error)
	// Alive reports whether the connection is still usable.
	Alive() bool
	// Begin counts a request or tunnel on the connection (for metrics)
	// until end is called.
	Begin() (end func())
	// Forget stops the pool from handing out this connection: a failure
	// showed it is broken, the next Get redials.
	Forget()
}

// TunnelStream is an open tunnel to a peer's target: the app's byte
// stream. Its errors are meshcode errors (a reset is a
// *meshcode.StreamError).
type TunnelStream interface {
	io.Reader
	io.Writer
	// CloseWrite ends our direction (FIN).
	CloseWrite() error
	// Reset aborts both directions with code.
	Reset(code meshcode.Code)
}

// Balancer chooses the endpoint that gets the next unit of work and
// learns from what happened to it (internal/balance implements it).
type Balancer interface {
	// Pick returns the index in eps of the chosen endpoint, never one
	// for which skip returns true; ok is false when none is left. The
	// work counts as outstanding on the endpoint until Done, which
	// follows each pick exactly once.
	Pick(eps []balance.Endpoint, skip func(i int) bool) (i int, ok bool)
	// Observe gives the outcome of picked work once it is known: a
	// request's latency to its response, a tunnel's latency to an open
	// stream (its lifetime says nothing about the endpoint), and whether
	// the endpoint failed it.
	Observe(ep balance.Endpoint, o balance.Outcome)
	// Done ends the picked work: a request answered, a tunnel closed.
	Done(ep balance.Endpoint)
}

// Config wires an outbound proxy.
type Config struct {
	Discovery Endpoints
	Peers     Peers
	// Balancer chooses among a service's endpoints; default
	// balance.New() (P2C over peak-EWMA latency).
	Balancer Balancer
	Logger   *slog.Logger
	// Name identifies this sidecar in Quicmesh-Proxy-Error headers.
	Name string
	// Metrics records golden metrics; nil records nothing.
	Metrics *telemetry.Metrics
	Options
}

// Options tunes the outbound proxy; the zero value takes every default.
type Options struct {
	// ConnectTimeout bounds discovery, peer connection and stream opening
	// for one app connection or request. Default 5s.
	ConnectTimeout time.Duration
	// MaxAttempts is how many distinct endpoints are tried before the app
	// gets an error. Default 3.
	MaxAttempts int
	// Detect bounds protocol detection on every listener (default: 1s,
	// 4 KiB). A client that sends nothing within the timeout is treated
	// as opaque (server-speaks-first protocols).
	Detect detect.Config
	// HeaderTimeout bounds reading a request header from the app (default
	// 10s); IdleTimeout closes idle app keep-alive connections (default
	// 90s); MaxHeaderBytes bounds request headers (default 64 KiB, 431
	// above it).
	HeaderTimeout  time.Duration
	IdleTimeout    time.Duration
	MaxHeaderBytes int
	// MaxInFlight sheds requests beyond this many concurrent ones with a
	// 503 (default 10,000; negative disables).
	MaxInFlight int
	// Resilience is the failure policy of HTTP requests (timeouts,
	// retries, budgets, breakers) and the failure accrual of the
	// default balancer.
	Resilience Resilience
}

// Proxy forwards app traffic to services.
type Proxy struct {
	cfg Config
	log *slog.Logger

	// The parts the layers share: one in-flight count for the whole
	// proxy, one connector (balancer state), one failure log limiter.
	shed      *loadShed
	connector *connector
	policies  *policies
	failures  failureLog
	tcp       tcpHandler

	conns connTracker

	mu      sync.Mutex
	fronts  []*httpFront
	closing bool
	// stop is closed by Close: connections waiting for discovery give up.
	stop chan struct{}
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
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 10000
	}
	if cfg.Name == "" {
		cfg.Name = "quicmesh"
	}
	if cfg.Balancer == nil {
		acc := cfg.Resilience.Accrual
		if acc.OnEject == nil {
			metrics := cfg.Metrics
			acc.OnEject = func(_, reason string) { metrics.Ejected(telemetry.Outbound, reason) }
		}
		cfg.Balancer = balance.NewAccrual(balance.New(), acc)
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger,
		shed:      &loadShed{max: cfg.MaxInFlight, metrics: cfg.Metrics, who: who(cfg.Name)},
		connector: newConnector(cfg),
		policies:  newPolicies(cfg.Resilience, time.Now),
		failures:  failureLog{log: cfg.Logger, limiter: lograte.New(0, 0, nil)},
	}
	p.stop = make(chan struct{})
	p.conns.init()
	p.tcp = p.tcpPath()
	return p
}

func who(name string) string { return "outbound " + name }

// PeerFailed tells the balancer that the transport found the peer at
// addr, proving identity id, unreachable (a failed dial, a connection
// whose peer stopped answering): failure accrual ejects it at once
// rather than after failed requests. reason is bounded (a metrics
// label). A balancer without failure accrual ignores it.
func (p *Proxy) PeerFailed(addr string, id identity.ID, reason string) {
	if e, ok := p.cfg.Balancer.(interface{ Eject(key, reason string) }); ok {
		e.Eject(discovery.Endpoint{Addr: addr, Identity: id.String()}.Key(), reason)
	}
}

// Serve accepts app connections on ln until it is closed. Each connection
// is classified by detection: HTTP/1.1 and HTTP/2 are served request by
// request, anything else is tunnelled to service as opaque TCP. With
// opaque set, detection is skipped. An empty service makes ln the HTTP
// proxy listener: requests are routed by their authority and non-HTTP
// traffic is refused. On a closed proxy Serve returns nil at once.
func (p *Proxy) Serve(ln net.Listener, service string, opaque bool) error {
	var front *httpFront
	if !opaque {
		front = p.newHTTPFront(service)
		if !p.start(front) {
			return nil
		}
	}
	return p.acceptLoop(ln, func(tc net.Conn) { p.serveConn(tc, front, service) })
}

// acceptLoop accepts on ln until it is closed (then nil), tracks each
// connection and serves it on its own goroutine; a temporary accept
// error (too many open files) is waited out rather than ending the
// listener.
func (p *Proxy) acceptLoop(ln net.Listener, serve func(net.Conn)) error {
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
		tc, ok := p.conns.track(conn)
		if !ok {
			conn.Close()
			continue
		}
		go func() {
			defer p.conns.served()
			serve(tc)
		}()
	}
}

// start registers front with the proxy and starts its servers, unless the
// proxy is closing: a front registered after Close looked would never be
// closed, and its server goroutine would outlive the proxy.
func (p *Proxy) start(f *httpFront) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.fronts = append(p.fronts, f)
	f.start()
	return true
}

// Close resets every open app connection and waits for their goroutines.
// Closing the listeners is the caller's job.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.closing {
		close(p.stop)
	}
	p.closing = true
	fronts := p.fronts
	p.mu.Unlock()
	p.conns.resetAll()
	for _, f := range fronts {
		f.close()
	}
	p.conns.wait()
	return nil
}

// Shutdown drains: HTTP keep-alive connections are closed once idle and
// tunnels run to completion, until ctx ends. The listeners must already be
// closed. Close ends whatever is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	fronts := p.fronts
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, f := range fronts {
		wg.Add(1)
		go func() { defer wg.Done(); f.shutdown(ctx) }()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { p.conns.wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		p.Close()
		<-done
		return ctx.Err()
	}
}
