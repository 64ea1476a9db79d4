// Package identity defines workload identity for quicmesh: SPIFFE IDs, the
// Provider that supplies the local workload's certificate and trust roots,
// and the TLS configuration that enforces mutual authentication between
// sidecars.
//
// The pieces:
//
//   - ID, ParseID, IDFromCert: SPIFFE IDs and X.509-SVID parsing.
//   - CA (ca.go): a small built-in certificate authority that mints
//     ECDSA P-256 workload certificates for one trust domain.
//   - Providers: StaticProvider (in memory, rotated with Set), CAProvider
//     (issues and renews its own certificate from an in-process CA),
//     FileProvider (PEM files on disk, reloaded when they change) and
//     identity/spiffe's Workload API provider (SVIDs from a SPIRE agent).
//     Each holds one trust bundle per trust domain: the local one and any
//     federated ones (Provider.Bundle).
//   - ServerConfig, ClientConfig (tlsconfig.go): TLS 1.3-only configs that
//     authenticate peers by SPIFFE ID rather than host name, fail closed,
//     and report refusals as *VerifyError with a bounded Reason.
package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// ErrUnauthorized is wrapped by every peer-verification failure so callers
// can branch on "the peer was refused" without parsing messages.
var ErrUnauthorized = errors.New("identity: peer unauthorized")

// ErrNoIdentity is wrapped by a Provider's errors when it has no usable
// certificate or trust bundle. The TLS configs fail closed on it: no
// handshake completes without a local identity.
var ErrNoIdentity = errors.New("identity: no local identity")

// ID is a SPIFFE ID: spiffe://<trust domain>/<path>.
type ID struct {
	TrustDomain string
	Path        string // always starts with "/" when non-empty
}

// ParseID parses and validates a SPIFFE ID. It accepts only the canonical
// form: scheme "spiffe", a lower-case trust domain, no port, user info,
// query or fragment, and a path without empty, "." or ".." segments.
func ParseID(s string) (ID, error) {
	const prefix = "spiffe://"
	if !strings.HasPrefix(s, prefix) {
		return ID{}, fmt.Errorf("identity: %q is not a SPIFFE ID: scheme must be spiffe://", s)
	}
	rest := s[len(prefix):]
	td, path, _ := strings.Cut(rest, "/")
	if td == "" {
		return ID{}, fmt.Errorf("identity: %q has an empty trust domain", s)
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return ID{}, fmt.Errorf("identity: %q: trust domain may contain only a-z, 0-9, '-', '.', '_'", s)
		}
	}
	id := ID{TrustDomain: td}
	if path == "" {
		if strings.HasSuffix(rest, "/") {
			return ID{}, fmt.Errorf("identity: %q: path must not end with '/'", s)
		}
		return id, nil
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return ID{}, fmt.Errorf("identity: %q: path has an empty, '.' or '..' segment", s)
		}
		for _, r := range seg {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
				return ID{}, fmt.Errorf("identity: %q: path may contain only letters, digits, '-', '.', '_'", s)
			}
		}
	}
	id.Path = "/" + path
	return id, nil
}

// MustParseID is ParseID for constants in tests and defaults.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// String returns the URI form of the ID.
func (id ID) String() string {
	if id.TrustDomain == "" {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.Path
}

// IsZero reports whether the ID is unset.
func (id ID) IsZero() bool { return id.TrustDomain == "" }

// URL returns the ID as a URL for a certificate's URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: id.Path}
}

// IDFromCert extracts the SPIFFE ID of a certificate. A workload
// certificate must carry exactly one URI SAN and it must be a SPIFFE ID.
func IDFromCert(cert *x509.Certificate) (ID, error) {
	if cert == nil {
		return ID{}, fmt.Errorf("identity: no certificate: %w", ErrUnauthorized)
	}
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("identity: certificate has %d URI SANs, want exactly one SPIFFE ID: %w", len(cert.URIs), ErrUnauthorized)
	}
	id, err := ParseID(cert.URIs[0].String())
	if err != nil {
		return ID{}, fmt.Errorf("%w: %w", err, ErrUnauthorized)
	}
	return id, nil
}

// ErrNoBundle is wrapped by Provider.Bundle's error when the provider
// holds no trust bundle for the trust domain asked about. A peer of such a
// trust domain is untrusted (ReasonUntrusted).
var ErrNoBundle = errors.New("identity: no trust bundle for trust domain")

// Provider supplies the local workload's identity. Implementations must be
// safe for concurrent use; Certificate and Bundle are called on every TLS
// handshake so rotation takes effect without a restart.
type Provider interface {
	// Certificate returns the current workload certificate chain and key.
	Certificate() (*tls.Certificate, error)
	// Bundle returns the current trust bundle of trust domain td: the
	// X.509 authorities allowed to issue identities of td, and only of td.
	// For the local trust domain (that of the current certificate) it is
	// the local bundle, and a missing one is an error wrapping
	// ErrNoIdentity; for any other trust domain it is a federated bundle,
	// and a trust domain without one is an error wrapping ErrNoBundle.
	Bundle(td string) (*x509.CertPool, error)
	// Changed returns a channel that is closed the next time the
	// certificate or any bundle changes. Each change closes the channel
	// handed out before it, so any number of watchers can wait on it.
	Changed() <-chan struct{}
}

// Bundles maps trust domain names to their trust bundles: the federated
// bundles a provider holds besides its local one.
type Bundles map[string]*x509.CertPool

// LocalBundle returns p's bundle for its own trust domain, that of its
// current certificate.
func LocalBundle(p Provider) (*x509.CertPool, error) {
	id, err := LocalID(p)
	if err != nil {
		return nil, err
	}
	return p.Bundle(id.TrustDomain)
}

// CheckTrustDomain reports whether td is a valid trust domain name, as in
// the host part of a SPIFFE ID.
func CheckTrustDomain(td string) error {
	id, err := ParseID("spiffe://" + td)
	if err != nil || id.Path != "" {
		return fmt.Errorf("identity: %q is not a trust domain name (lower-case letters, digits, '-', '.', '_')", td)
	}
	return nil
}

// LocalID returns the SPIFFE ID of the provider's current certificate.
func LocalID(p Provider) (ID, error) {
	if p == nil {
		return ID{}, fmt.Errorf("identity: nil provider: %w", ErrNoIdentity)
	}
	cert, err := p.Certificate()
	if err != nil {
		return ID{}, err
	}
	leaf, err := leafOf(cert)
	if err != nil {
		return ID{}, err
	}
	id, err := idOfCert(leaf)
	if err != nil {
		return ID{}, fmt.Errorf("identity: local certificate: %w", err)
	}
	return id, nil
}

// leafOf returns the parsed leaf of cert, parsing it if Leaf is unset.
func leafOf(cert *tls.Certificate) (*x509.Certificate, error) {
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, fmt.Errorf("identity: empty certificate: %w", ErrNoIdentity)
	}
	if cert.Leaf != nil {
		return cert.Leaf, nil
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("identity: parsing local certificate: %w", err)
	}
	return leaf, nil
}

// idOfCert is IDFromCert without the ErrUnauthorized wrapping, for our own
// certificates.
func idOfCert(cert *x509.Certificate) (ID, error) {
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("identity: certificate has %d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
	return ParseID(cert.URIs[0].String())
}

// Authorizer decides whether a verified peer may talk to us. It is called
// only after the peer's chain has been verified against the trust bundle.
type Authorizer func(peer ID) error

// AuthorizeID accepts exactly one peer identity.
func AuthorizeID(want ID) Authorizer {
	return func(peer ID) error {
		if peer != want {
			return &VerifyError{Reason: ReasonWrongID, Err: fmt.Errorf("peer is %s, want %s", peer, want)}
		}
		return nil
	}
}

// AuthorizeTrustDomain accepts any identity in one trust domain.
func AuthorizeTrustDomain(td string) Authorizer { return AuthorizeTrustDomains(td) }

// AuthorizeTrustDomains accepts any identity in one of the listed trust
// domains, e.g. the local one and federated ones whose workloads may call
// us. Peers of every trust domain are verified against that trust
// domain's own bundle before an Authorizer is asked.
func AuthorizeTrustDomains(tds ...string) Authorizer {
	tds = slices.Clone(tds)
	return func(peer ID) error {
		if !slices.Contains(tds, peer.TrustDomain) {
			return &VerifyError{Reason: ReasonWrongID, Err: fmt.Errorf("peer %s is not in an accepted trust domain %q", peer, tds)}
		}
		return nil
	}
}

// Reasons a peer is refused; used as a bounded metrics label.
const (
	ReasonNoCertificate = "no_certificate"
	ReasonUntrusted     = "untrusted"
	ReasonExpired       = "expired"
	ReasonBadID         = "bad_id"
	ReasonWrongID       = "wrong_id"
	ReasonNoIdentity    = "no_local_identity"
	// ReasonOther is what ReasonOf reports for an error that carries no
	// classification.
	ReasonOther = "other"
)

// VerifyError explains why a peer was refused.
type VerifyError struct {
	Reason string
	Err    error
}

func (e *VerifyError) Error() string {
	what := "peer refused"
	if e.Reason == ReasonNoIdentity {
		// The fault is ours, not the peer's.
		what = "handshake refused"
	}
	msg := "identity: " + what + " (" + e.Reason + ")"
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrUnauthorized) true for every VerifyError
// and exposes the underlying cause.
func (e *VerifyError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrUnauthorized}
	}
	return []error{e.Err, ErrUnauthorized}
}
