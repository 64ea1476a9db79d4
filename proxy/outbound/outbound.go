// Package outbound is the application-facing side of a sidecar: it accepts
// the local app's connections, finds the service's peers through
// discovery, and carries the traffic to one of them over the connection
// to that peer a transport (Peers) shares.
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
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Endpoints is what the outbound proxy needs from discovery: the current
// endpoint set of a service (discovery.Cache implements it).
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

// Config wires an outbound proxy.
type Config struct {
	Discovery Endpoints
	Peers     Peers
	Logger    *slog.Logger
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
}

// Proxy forwards app traffic to services.
type Proxy struct {
	cfg      Config
	balancer *balance.Balancer
	log      *slog.Logger

	inflight atomic.Int64

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	fronts  []*httpFront
	closing bool
	wg      sync.WaitGroup

	// failureLogs rate-limits per-request failure lines (a partition
	// fails every request) per service and reason.
	failureLogs *lograte.Limiter
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
	return &Proxy{cfg: cfg, balancer: balance.New(), log: cfg.Logger, conns: make(map[net.Conn]struct{}), failureLogs: lograte.New(0, 0, nil)}
}

func (p *Proxy) who() string { return "outbound " + p.cfg.Name }

// discoveryError says in one sentence why discovery gave no endpoints for
// service. The resolvers' own wrapping repeats the name at every layer
// ("resolving ...: resolve ...: resolve ..."); the sentinel stays
// reachable for errors.Is.
func discoveryError(service string, err error) error {
	switch {
	case errors.Is(err, discovery.ErrUnknownService):
		return sentence{fmt.Sprintf("no service %q in discovery", service), err}
	case errors.Is(err, discovery.ErrNoEndpoints):
		return sentence{fmt.Sprintf("service %q has no endpoints", service), err}
	}
	return fmt.Errorf("outbound: discovering %q: %w", service, err)
}

// sentence is an error whose text replaces that of the error it wraps.
type sentence struct {
	text string
	err  error
}

func (e sentence) Error() string { return e.text }
func (e sentence) Unwrap() error { return e.err }

// ErrNoRoute is wrapped when no endpoint of a service could be reached.
var ErrNoRoute = errors.New("outbound: no reachable endpoint")

// Connect picks an endpoint of service and returns the shared connection
// to it. Endpoints whose peer cannot be reached are skipped, up to
// MaxAttempts. done must be called when the work on the connection ends.
func (p *Proxy) Connect(ctx context.Context, service string) (PeerConn, func(ok bool), error) {
	eps, err := p.cfg.Discovery.Endpoints(ctx, service)
	if err != nil {
		return nil, nil, discoveryError(service, err)
	}
	tried := make(map[string]bool, p.cfg.MaxAttempts)
	var lastErr error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		// Endpoints in back-off (failed dial, draining) are skipped while
		// others remain; if none remain they are tried anyway and fail fast.
		ep, done, ok := p.balancer.Pick(eps, func(e discovery.Endpoint) bool {
			return tried[e.Key()] || p.unavailable(e)
		})
		if !ok {
			ep, done, ok = p.balancer.Pick(eps, func(e discovery.Endpoint) bool { return tried[e.Key()] })
		}
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
		pc, err := p.cfg.Peers.Get(ctx, ep.Addr, id)
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

// Serve accepts app connections on ln until it is closed. Each connection
// is classified by detection: HTTP/1.1 and HTTP/2 are served request by
// request, anything else is tunnelled to service as opaque TCP. With
// opaque set, detection is skipped. An empty service makes ln the HTTP
// proxy listener: requests are routed by their authority and non-HTTP
// traffic is refused.
func (p *Proxy) Serve(ln net.Listener, service string, opaque bool) error {
	var front *httpFront
	if !opaque {
		front = p.newHTTPFront(service)
		p.mu.Lock()
		p.fronts = append(p.fronts, front)
		p.mu.Unlock()
	}
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
			p.serveConn(conn, front, service)
		}()
	}
}

func (p *Proxy) serveConn(conn net.Conn, front *httpFront, service string) {
	if front == nil {
		p.ForwardTCP(conn, service, service)
		return
	}
	proto, dconn, err := detect.Detect(conn, p.cfg.Detect)
	if err != nil {
		p.log.Debug("protocol detection failed", "client", conn.RemoteAddr().String(), "error", err)
		splice.Reset(conn)
		return
	}
	switch {
	case proto == detect.HTTP1 || proto == detect.HTTP2:
		front.serve(dconn, proto)
	case service == "":
		p.log.Warn("non-HTTP traffic on the HTTP proxy listener", "client", conn.RemoteAddr().String())
		splice.Reset(conn)
	default:
		p.ForwardTCP(dconn, service, service)
	}
}

func (p *Proxy) unavailable(e discovery.Endpoint) bool {
	id, err := identity.ParseID(e.Identity)
	return err != nil || p.cfg.Peers.Unavailable(e.Addr, id)
}

// ForwardTCP tunnels one app connection to service, addressing target in
// the tunnel header. Errors reset the app's connection: a client is never
// left hanging on a connection that will not carry data.
func (p *Proxy) ForwardTCP(conn net.Conn, service, target string) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ConnectTimeout)
	pc, done, err := p.Connect(ctx, service)
	if err != nil {
		cancel()
		p.logFailure("tcp forward failed", service, err, "client", conn.RemoteAddr().String())
		splice.Reset(conn)
		return
	}
	pc, done, str, err := p.openTunnel(ctx, service, target, pc, done)
	cancel()
	if err != nil {
		p.logFailure("opening tunnel failed", service, err, "peer", pc.Addr())
		splice.Reset(conn)
		return
	}
	p.splice(conn, str, pc, done, service)
}

// openTunnel opens a tunnel stream to target on pc (from Connect, with its
// done). If the pooled connection turned out dead
// (meshcode.ErrNotProcessed: the stream could not be opened, or the peer
// lost its state, e.g. a QUIC stateless reset), nothing was sent,
// so it redials once and opens the stream on the fresh connection. On
// error done has been called and the returned connection is the one that
// failed.
func (p *Proxy) openTunnel(ctx context.Context, service, target string, pc PeerConn, done func(bool)) (PeerConn, func(bool), TunnelStream, error) {
	for attempt := 0; ; attempt++ {
		str, err := pc.OpenTunnel(ctx, target)
		if err == nil {
			return pc, done, str, nil
		}
		done(false)
		pc.Forget()
		if attempt > 0 || !errors.Is(err, meshcode.ErrNotProcessed) || ctx.Err() != nil {
			return pc, nil, nil, err
		}
		p.log.Debug("retrying tunnel open on a fresh connection", "service", service, "peer", pc.Addr(), "error", err)
		next, nextDone, cerr := p.Connect(ctx, service)
		if cerr != nil {
			return pc, nil, nil, fmt.Errorf("%w (redialling: %w)", err, cerr)
		}
		pc, done = next, nextDone
	}
}

// logFailure logs a request or tunnel that failed, at most once per
// service and reason per interval: during a partition every request
// fails the same way.
func (p *Proxy) logFailure(msg, service string, err error, args ...any) {
	reason := failureReason(err)
	if errors.Is(err, discovery.ErrUnknownService) || errors.Is(err, discovery.ErrNoEndpoints) {
		reason = "no_endpoints"
	} else if errors.Is(err, meshcode.ErrPeerUnavailable) && reason == identity.ReasonOther {
		reason = "peer_unavailable"
	}
	args = append([]any{"service", service, "reason", reason}, args...)
	p.failureLogs.Log(p.log, slog.LevelWarn, msg+"|"+service+"|"+reason, msg, append(args, "error", err)...)
}

// failureReason is the bounded reason a failed request or tunnel is logged
// with: the one the transport gave a failed dial (a handshake reason), an
// identity check's, "timeout" when our own time ran out, else
// identity.ReasonOther.
func failureReason(err error) string {
	if r, ok := errors.AsType[interface {
		error
		FailureReason() string
	}](err); ok && r.FailureReason() != "" {
		return r.FailureReason()
	}
	if reason := identity.ReasonOf(err); reason != identity.ReasonOther {
		return reason
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return identity.ReasonOther
}

// splice runs an opened tunnel to completion with its bookkeeping: the
// peer connection's stream count, TCP metrics and the balancer's result.
func (p *Proxy) splice(conn net.Conn, str TunnelStream, pc PeerConn, done func(bool), service string) {
	end := pc.Begin()
	closed := p.cfg.Metrics.TCPOpen(telemetry.Outbound, pc.Peer().String(), service)
	res := splice.Run(conn, str)
	end()
	closed(res.Sent, res.Received, splice.ErrClass(res.Err))
	done(res.Err == nil)
	p.log.Debug("tcp tunnel closed", "service", service, "peer", pc.Addr(), "sent", res.Sent, "received", res.Received, "error", res.Err)
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
		splice.Reset(c)
	}
	fronts := p.fronts
	p.mu.Unlock()
	for _, f := range fronts {
		f.close()
	}
	p.wg.Wait()
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
		go func() { defer wg.Done(); f.h1.Shutdown(ctx) }()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		p.Close()
		<-done
		return ctx.Err()
	}
}
