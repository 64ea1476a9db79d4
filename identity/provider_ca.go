package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// CAProviderOptions configures a CAProvider. The zero value is usable.
type CAProviderOptions struct {
	// Lifetime of each issued certificate; 0 means DefaultCertLifetime.
	// The certificate is renewed at about half its lifetime.
	Lifetime time.Duration
	// Logger receives renewal failures; nil discards them.
	Logger *slog.Logger
	// Federated are the bundles of other trust domains whose peers may be
	// verified (e.g. another CA's Pool()); nil federates none.
	Federated Bundles
}

// minRenewWait bounds how often a CAProvider re-issues, whatever the
// lifetime, so a tiny lifetime cannot turn into a busy loop.
const minRenewWait = 10 * time.Millisecond

// CAProvider is a Provider that issues its own certificate from an
// in-process CA and re-issues it at about half of its lifetime, closing
// Changed on each renewal. It suits demos and tests where every sidecar
// shares one process-local CA. Close stops the renewal goroutine.
type CAProvider struct {
	ca       *CA
	id       ID
	lifetime time.Duration
	logger   *slog.Logger
	sp       *StaticProvider
	roots    *x509.CertPool

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ Provider = (*CAProvider)(nil)

// NewCAProvider issues a certificate for id from ca and starts renewing
// it in the background. The local trust bundle is ca's root.
func NewCAProvider(ca *CA, id ID, opts CAProviderOptions) (*CAProvider, error) {
	if ca == nil {
		return nil, errors.New("identity: NewCAProvider: nil CA")
	}
	if opts.Lifetime < 0 {
		return nil, errors.New("identity: NewCAProvider: negative lifetime")
	}
	if opts.Lifetime == 0 {
		opts.Lifetime = DefaultCertLifetime
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cert, err := ca.Issue(id, opts.Lifetime)
	if err != nil {
		return nil, err
	}
	roots := ca.Pool()
	p := &CAProvider{
		ca:       ca,
		id:       id,
		lifetime: opts.Lifetime,
		logger:   opts.Logger.With("identity", id.String()),
		sp:       NewStaticProvider(cert, roots),
		roots:    roots,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if opts.Federated != nil {
		p.sp.SetFederated(opts.Federated)
	}
	go p.run(cert.Leaf)
	return p, nil
}

func (p *CAProvider) run(leaf *x509.Certificate) {
	defer close(p.done)
	backoff := 100 * time.Millisecond
	timer := time.NewTimer(p.renewWait(leaf))
	defer timer.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-timer.C:
		}
		cert, err := p.ca.Issue(p.id, p.lifetime)
		if err != nil {
			p.logger.Warn("identity: renewing certificate failed; serving the previous one", "error", err, "retry_in", backoff)
			timer.Reset(backoff)
			backoff = min(2*backoff, time.Minute)
			continue
		}
		backoff = 100 * time.Millisecond
		p.sp.Set(cert, p.roots)
		p.logger.Debug("identity: certificate renewed", "not_after", cert.Leaf.NotAfter)
		timer.Reset(p.renewWait(cert.Leaf))
	}
}

// renewWait is how long to wait before renewing leaf: half its remaining
// validity, or, when the CA's own expiry capped the leaf (so renewing
// earlier cannot help), until the CA expires.
func (p *CAProvider) renewWait(leaf *x509.Certificate) time.Duration {
	remaining := time.Until(leaf.NotAfter)
	wait := remaining / 2
	if leaf.NotAfter.Equal(p.ca.cert.NotAfter) {
		p.logger.Warn("identity: certificate lifetime capped by CA expiry", "ca_not_after", p.ca.cert.NotAfter)
		wait = remaining
	}
	return max(wait, minRenewWait)
}

// Renew issues a new certificate now and closes Changed.
func (p *CAProvider) Renew() error {
	cert, err := p.ca.Issue(p.id, p.lifetime)
	if err != nil {
		return err
	}
	p.sp.Set(cert, p.roots)
	return nil
}

// Certificate returns the current certificate.
func (p *CAProvider) Certificate() (*tls.Certificate, error) { return p.sp.Certificate() }

// Bundle returns the CA's root for the CA's trust domain and the
// configured federated bundles for others.
func (p *CAProvider) Bundle(td string) (*x509.CertPool, error) { return p.sp.Bundle(td) }

// Changed returns a channel closed at the next renewal.
func (p *CAProvider) Changed() <-chan struct{} { return p.sp.Changed() }

// ID returns the identity the provider issues certificates for.
func (p *CAProvider) ID() ID { return p.id }

// Close stops renewal and waits for the renewal goroutine to exit. The
// last certificate keeps being served until it expires. Close is
// idempotent.
func (p *CAProvider) Close() error {
	p.closeOnce.Do(func() { close(p.stop) })
	<-p.done
	return nil
}
