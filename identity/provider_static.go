package identity

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"sync"
)

// StaticProvider is an in-memory Provider. Set and SetFederated replace
// its material, so it also serves as the building block of the rotating
// providers.
type StaticProvider struct {
	mu      sync.RWMutex
	cert    *tls.Certificate
	localTD string // trust domain of cert; "" without a usable one
	roots   *x509.CertPool
	fed     Bundles
	changed chan struct{}
}

var _ Provider = (*StaticProvider)(nil)

// NewStaticProvider returns a provider serving cert and roots, the bundle
// of cert's own trust domain, and no federated bundles. Either may be nil,
// in which case the provider fails closed: Certificate (or Bundle of the
// local trust domain) returns an error wrapping ErrNoIdentity until Set
// supplies it.
func NewStaticProvider(cert *tls.Certificate, roots *x509.CertPool) *StaticProvider {
	p := &StaticProvider{changed: make(chan struct{})}
	p.cert, p.localTD = withLeaf(cert)
	p.roots = roots
	return p
}

// Set replaces the certificate and the local bundle, keeps the federated
// bundles, and closes the channel handed out by Changed, waking every
// watcher. The next handshake uses the new material.
func (p *StaticProvider) Set(cert *tls.Certificate, roots *x509.CertPool) {
	cert, td := withLeaf(cert)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cert, p.localTD, p.roots = cert, td, roots
	p.notifyLocked()
}

// SetFederated replaces the federated bundles (a copy of fed is kept) and
// closes the channel handed out by Changed. An entry for the local trust
// domain is ignored: the local bundle always comes from Set.
func (p *StaticProvider) SetFederated(fed Bundles) {
	fed = maps.Clone(fed)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fed = fed
	p.notifyLocked()
}

// setAll replaces all the material at once, with one notification.
func (p *StaticProvider) setAll(cert *tls.Certificate, roots *x509.CertPool, fed Bundles) {
	cert, td := withLeaf(cert)
	fed = maps.Clone(fed)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cert, p.localTD, p.roots, p.fed = cert, td, roots, fed
	p.notifyLocked()
}

func (p *StaticProvider) notifyLocked() {
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

// Bundle returns the bundle of trust domain td: the local bundle if td is
// the current certificate's trust domain, else a federated one. Without a
// certificate the local trust domain is unknown and every call fails with
// ErrNoIdentity.
func (p *StaticProvider) Bundle(td string) (*x509.CertPool, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	switch {
	case p.localTD == "":
		return nil, fmt.Errorf("identity: provider has no certificate, so no trust domain: %w", ErrNoIdentity)
	case td == p.localTD && p.roots == nil:
		return nil, fmt.Errorf("identity: provider has no trust bundle: %w", ErrNoIdentity)
	case td == p.localTD:
		return p.roots, nil
	}
	if b := p.fed[td]; b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("identity: %q: %w", td, ErrNoBundle)
}

// Changed returns a channel closed by the next Set or SetFederated.
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
// the caller's value, and the trust domain of its SPIFFE ID ("" if it has
// none). A certificate that does not parse is returned as is; handshakes
// will then fail on it.
func withLeaf(cert *tls.Certificate) (*tls.Certificate, string) {
	if cert == nil || len(cert.Certificate) == 0 {
		return cert, ""
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return cert, ""
		}
		c := *cert
		c.Leaf = leaf
		cert = &c
	}
	id, err := idOfCert(cert.Leaf)
	if err != nil {
		return cert, ""
	}
	return cert, id.TrustDomain
}
