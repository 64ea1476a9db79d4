package identity

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
)

// StaticProvider is an in-memory Provider. Set replaces its material, so
// it also serves as the building block of the rotating providers.
type StaticProvider struct {
	mu      sync.RWMutex
	cert    *tls.Certificate
	roots   *x509.CertPool
	changed chan struct{}
}

var _ Provider = (*StaticProvider)(nil)

// NewStaticProvider returns a provider serving cert and roots. Either may
// be nil, in which case the provider fails closed: Certificate (or Roots)
// returns an error wrapping ErrNoIdentity until Set supplies it.
func NewStaticProvider(cert *tls.Certificate, roots *x509.CertPool) *StaticProvider {
	return &StaticProvider{cert: withLeaf(cert), roots: roots, changed: make(chan struct{})}
}

// Set replaces the certificate and roots and closes the channel handed out
// by Changed, waking every watcher. The next handshake uses the new
// material.
func (p *StaticProvider) Set(cert *tls.Certificate, roots *x509.CertPool) {
	cert = withLeaf(cert)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cert, p.roots = cert, roots
	close(p.changed)
	p.changed = make(chan struct{})
}

// Certificate returns the current certificate, or an error wrapping
// ErrNoIdentity if there is none.
func (p *StaticProvider) Certificate() (*tls.Certificate, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.cert == nil || len(p.cert.Certificate) == 0 || p.cert.PrivateKey == nil {
		return nil, fmt.Errorf("identity: provider has no certificate: %w", ErrNoIdentity)
	}
	return p.cert, nil
}

// Roots returns the current trust bundle, or an error wrapping
// ErrNoIdentity if there is none.
func (p *StaticProvider) Roots() (*x509.CertPool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.roots == nil {
		return nil, fmt.Errorf("identity: provider has no trust bundle: %w", ErrNoIdentity)
	}
	return p.roots, nil
}

// Changed returns a channel closed by the next Set.
func (p *StaticProvider) Changed() <-chan struct{} {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.changed
}

// ID returns the SPIFFE ID of the current certificate, or the zero ID if
// there is none.
func (p *StaticProvider) ID() ID {
	id, _ := LocalID(p)
	return id
}

// withLeaf returns cert with Leaf populated, copying rather than modifying
// the caller's value. A certificate that does not parse is returned as is;
// handshakes will then fail on it.
func withLeaf(cert *tls.Certificate) *tls.Certificate {
	if cert == nil || cert.Leaf != nil || len(cert.Certificate) == 0 {
		return cert
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return cert
	}
	c := *cert
	c.Leaf = leaf
	return &c
}
