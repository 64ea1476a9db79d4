// Package spiffe is an identity.Provider backed by the SPIFFE Workload API
// (a SPIRE agent, typically): the agent streams the workload's X.509-SVID
// and the trust bundles, its own trust domain's and those of the trust
// domains it federates with, and pushes new ones as it rotates them.
//
// The provider fails closed: until the first X.509-SVID arrives,
// Certificate and Bundle return errors wrapping identity.ErrNoIdentity, so
// no handshake completes; Ready is closed when it arrives. Once it has an
// SVID it keeps serving the last one the agent sent, through Workload API
// outages, until the agent sends another (the certificate's own expiry
// then fails handshakes, as with any provider).
package spiffe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/identity"
)

// SocketEnv is the environment variable that names the Workload API
// socket by SPIFFE convention.
const SocketEnv = workloadapi.SocketEnv

// CheckAddress reports whether addr is a Workload API address the client
// can dial: unix:///path or tcp://IP:PORT.
func CheckAddress(addr string) error {
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return fmt.Errorf("spiffe: Workload API address %q: %w", addr, err)
	}
	return nil
}

// Options configures a Provider.
type Options struct {
	// Logger receives SVID updates and Workload API errors; nil discards
	// them.
	Logger *slog.Logger
	// MaxRetryWait bounds the wait between attempts to (re)open the
	// Workload API stream; 0 means 5s. Waits start at 100ms and double.
	MaxRetryWait time.Duration
}

// Provider implements identity.Provider with the Workload API.
type Provider struct {
	logger *slog.Logger

	mu      sync.RWMutex
	cert    *tls.Certificate
	id      identity.ID
	bundles identity.Bundles // every trust domain's, the local one included
	changed chan struct{}
	ready   chan struct{}
	lastErr string // the last watch error logged, to log each kind once

	client *workloadapi.Client
	cancel context.CancelFunc
	done   chan struct{}
	close  sync.Once
}

var _ identity.Provider = (*Provider)(nil)

// New connects to the Workload API at addr (see CheckAddress) and starts
// watching for X.509-SVIDs in the background. It does not wait for the
// first one: see Ready.
func New(addr string, opts Options) (*Provider, error) {
	if err := CheckAddress(addr); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxRetryWait <= 0 {
		opts.MaxRetryWait = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	// New only builds the gRPC channel; it connects lazily, so an agent
	// that is not up yet is an error of the watch, retried, not of New.
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr),
		workloadapi.WithBackoffStrategy(doublingBackoff{max: opts.MaxRetryWait}))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("spiffe: Workload API client for %s: %w", addr, err)
	}
	p := &Provider{
		logger:  opts.Logger.With("workload_api", addr),
		changed: make(chan struct{}),
		ready:   make(chan struct{}),
		client:  client,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		// Returns only once ctx is cancelled (or on InvalidArgument,
		// which an agent sends for a malformed request, never for ours).
		err := client.WatchX509Context(ctx, watcher{p})
		if ctx.Err() == nil {
			p.logger.Error("spiffe: Workload API watch ended; no further SVID updates", "error", err)
		}
	}()
	return p, nil
}

// watcher adapts the Provider to workloadapi.X509ContextWatcher without
// exporting the callbacks.
type watcher struct{ p *Provider }

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.p.update(c) }
func (w watcher) OnX509ContextWatchError(err error)              { w.p.watchError(err) }

// update installs an X.509 context pushed by the agent.
func (p *Provider) update(c *workloadapi.X509Context) {
	if len(c.SVIDs) == 0 {
		p.watchError(errors.New("Workload API sent no X.509-SVID"))
		return
	}
	svid := c.DefaultSVID()
	id, err := identity.ParseID(svid.ID.String())
	if err != nil {
		p.watchError(fmt.Errorf("X.509-SVID: %w", err))
		return
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	bundles := identity.Bundles{}
	for _, b := range c.Bundles.Bundles() {
		pool := x509.NewCertPool()
		for _, ca := range b.X509Authorities() {
			pool.AddCert(ca)
		}
		bundles[b.TrustDomain().Name()] = pool
	}
	if bundles[id.TrustDomain] == nil {
		p.watchError(fmt.Errorf("Workload API sent no bundle for the SVID's own trust domain %q", id.TrustDomain))
		return
	}

	p.mu.Lock()
	first := p.cert == nil
	p.cert, p.id, p.bundles, p.lastErr = cert, id, bundles, ""
	close(p.changed)
	p.changed = make(chan struct{})
	if first {
		close(p.ready)
	}
	p.mu.Unlock()

	federated := slices.DeleteFunc(slices.Sorted(maps.Keys(bundles)), func(td string) bool { return td == id.TrustDomain })
	level := slog.LevelDebug
	if first {
		level = slog.LevelInfo
	}
	p.logger.Log(context.Background(), level, "spiffe: X.509-SVID received", "id", id.String(),
		"serial", cert.Leaf.SerialNumber.String(), "not_after", cert.Leaf.NotAfter, "federated", federated)
}

// watchError logs a Workload API error once per distinct message: the
// client retries on its own, and an agent that keeps refusing an unknown
// workload would otherwise log the same line at every retry.
func (p *Provider) watchError(err error) {
	p.mu.Lock()
	repeated := p.lastErr == err.Error()
	p.lastErr = err.Error()
	hasSVID := p.cert != nil
	p.mu.Unlock()
	if repeated || status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	if hasSVID {
		p.logger.Warn("spiffe: Workload API error; serving the last X.509-SVID", "error", err)
		return
	}
	p.logger.Warn("spiffe: no X.509-SVID yet; not ready (is this workload registered with the agent?)", "error", err)
}

// Ready is closed when the first X.509-SVID has arrived.
func (p *Provider) Ready() <-chan struct{} { return p.ready }

// Certificate returns the current X.509-SVID, or an error wrapping
// identity.ErrNoIdentity before the first one arrived.
func (p *Provider) Certificate() (*tls.Certificate, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.cert == nil {
		return nil, fmt.Errorf("spiffe: no X.509-SVID from the Workload API yet: %w", identity.ErrNoIdentity)
	}
	return p.cert, nil
}

// Bundle returns the bundle the agent sent for trust domain td: the local
// one, or that of a trust domain the workload's registration federates
// with.
func (p *Provider) Bundle(td string) (*x509.CertPool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	switch {
	case p.cert == nil:
		return nil, fmt.Errorf("spiffe: no X.509-SVID from the Workload API yet: %w", identity.ErrNoIdentity)
	case p.bundles[td] != nil:
		return p.bundles[td], nil
	default: // the local bundle is never missing: update checks it
		return nil, fmt.Errorf("spiffe: the Workload API sent no bundle for %q: %w", td, identity.ErrNoBundle)
	}
}

// Changed returns a channel closed at the next update from the agent.
func (p *Provider) Changed() <-chan struct{} {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.changed
}

// Close stops watching and waits for the watcher to exit. The last SVID
// keeps being served. Close is idempotent.
func (p *Provider) Close() error {
	var err error
	p.close.Do(func() {
		p.cancel()
		<-p.done
		err = p.client.Close()
	})
	return err
}

// doublingBackoff waits 100ms, 200ms, ... up to max between attempts to
// reach the Workload API. go-spiffe's default grows by a second per
// attempt up to 30s, which would keep a workload registered a moment
// after its sidecar started waiting for tens of seconds.
type doublingBackoff struct{ max time.Duration }

func (s doublingBackoff) NewBackoff() workloadapi.Backoff { return &doubling{max: s.max} }

type doubling struct {
	max, next time.Duration
}

func (b *doubling) Next() time.Duration {
	b.next = min(max(2*b.next, 100*time.Millisecond), b.max)
	return b.next
}

func (b *doubling) Reset() { b.next = 0 }
