package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

const (
	// DefaultCertLifetime is the lifetime of a workload certificate when
	// Issue is given 0.
	DefaultCertLifetime = 24 * time.Hour
	// DefaultCALifetime is the lifetime of a CA when NewCA is given 0.
	DefaultCALifetime = 365 * 24 * time.Hour

	// clockSkew back-dates NotBefore so peers whose clocks run slightly
	// behind accept a freshly issued certificate.
	clockSkew = time.Minute

	// CA file names used by WriteFiles.
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CA is a minimal built-in certificate authority for one SPIFFE trust
// domain. Its root is self-signed; it issues leaf workload certificates
// (X.509-SVIDs) directly, with no intermediates. A CA is immutable and safe
// for concurrent use.
type CA struct {
	cert        *x509.Certificate
	certPEM     []byte
	key         *ecdsa.PrivateKey
	trustDomain string
}

// NewCA creates a self-signed ECDSA P-256 root for trustDomain, valid from
// one minute ago (to tolerate clock skew) for lifetime (0 means
// DefaultCALifetime; NotAfter is rounded up to a whole second). The root
// carries the URI SAN spiffe://<trustDomain> and a random 128-bit serial.
func NewCA(trustDomain string, lifetime time.Duration) (*CA, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return nil, err
	}
	if lifetime < 0 {
		return nil, fmt.Errorf("identity: negative CA lifetime %v", lifetime)
	}
	if lifetime == 0 {
		lifetime = DefaultCALifetime
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"quicmesh"}, CommonName: "quicmesh CA " + td},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              ceilSecond(now.Add(lifetime)),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // leaves only: this CA issues no intermediates
		URIs:                  []*url.URL{ID{TrustDomain: td}.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing CA certificate: %w", err)
	}
	return newCA(cert, key, td), nil
}

func newCA(cert *x509.Certificate, key *ecdsa.PrivateKey, td string) *CA {
	return &CA{
		cert:        cert,
		certPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:         key,
		trustDomain: td,
	}
}

// LoadCA reads a CA written by WriteFiles (or any ECDSA CA whose
// certificate carries a SPIFFE trust-domain URI SAN such as
// spiffe://example.org). Errors name the offending file.
func LoadCA(certPEMPath, keyPEMPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPEMPath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading CA certificate %s: %w", certPEMPath, err)
	}
	keyPEM, err := os.ReadFile(keyPEMPath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading CA key %s: %w", keyPEMPath, err)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing CA certificate %s: %w", certPEMPath, err)
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("identity: CA certificate %s is not a CA (needs basic constraints CA:TRUE and keyCertSign)", certPEMPath)
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("identity: CA certificate %s has %d URI SANs, want exactly one spiffe://<trust domain>", certPEMPath, len(cert.URIs))
	}
	tdID, err := ParseID(cert.URIs[0].String())
	if err != nil {
		return nil, fmt.Errorf("identity: CA certificate %s: %w", certPEMPath, err)
	}
	if tdID.Path != "" {
		return nil, fmt.Errorf("identity: CA certificate %s: URI SAN %s is a workload ID, want a trust domain ID (no path)", certPEMPath, tdID)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing CA key %s: %w", keyPEMPath, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("identity: CA key %s is %T, want an ECDSA key", keyPEMPath, signer)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("identity: CA key %s does not match CA certificate %s", keyPEMPath, certPEMPath)
	}
	return newCA(cert, key, tdID.TrustDomain), nil
}

// WriteFiles writes the CA certificate to dir/ca.crt (mode 0644) and its
// private key (PKCS #8) to dir/ca.key (mode 0600), creating dir (0755) if
// needed. It refuses to overwrite either file: if one exists it writes
// nothing and returns an error naming it.
func (ca *CA) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: creating CA directory: %w", err)
	}
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("identity: refusing to overwrite existing %s", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("identity: checking %s: %w", p, err)
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("identity: encoding CA key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	// The key first: if it cannot be written there is no orphaned
	// certificate that looks like a usable CA.
	if err := writeNewFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNewFile(certPath, ca.certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNewFile creates path exclusively (O_EXCL, so a file that appeared
// since the check is not overwritten either) with the given mode,
// regardless of umask.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("identity: refusing to overwrite existing %s", path)
		}
		return fmt.Errorf("identity: creating %s: %w", path, err)
	}
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("identity: writing %s: %w", path, err)
	}
	return nil
}

// TrustDomain returns the CA's trust domain, e.g. "example.org".
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// Cert returns the CA's root certificate. Callers must not modify it.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// BundlePEM returns the PEM-encoded root certificate: the trust bundle
// that workloads verify peers against.
func (ca *CA) BundlePEM() []byte { return append([]byte(nil), ca.certPEM...) }

// Pool returns a new CertPool holding only the CA's root.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// Issue mints a workload certificate for id, which must be a workload ID
// (non-empty path) in the CA's trust domain. The leaf has a fresh ECDSA
// P-256 key, exactly one URI SAN (id), is usable for both server and
// client authentication, and is valid from one minute ago for lifetime (0
// means DefaultCertLifetime; NotAfter is rounded up to a whole second),
// but never past the CA's own expiry. The
// returned chain is just the leaf, with Leaf populated; peers hold the
// root in their bundle.
func (ca *CA) Issue(id ID, lifetime time.Duration) (*tls.Certificate, error) {
	notBefore, notAfter, err := ca.validity(id, lifetime)
	if err != nil {
		return nil, err
	}
	return ca.issue(id, notBefore, notAfter)
}

// Certify is Issue for a key the workload holds: it signs pub (from a
// certificate request whose signature the caller has checked) into a leaf
// for id, with the same constraints as Issue, and returns the leaf. The
// caller alone chooses id; nothing of the request but its key is used.
func (ca *CA) Certify(id ID, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	notBefore, notAfter, err := ca.validity(id, lifetime)
	if err != nil {
		return nil, err
	}
	return ca.sign(id, pub, notBefore, notAfter)
}

// validity is the window Issue and Certify give a leaf: from a minute ago
// for lifetime (0: DefaultCertLifetime), capped at the CA's own expiry.
func (ca *CA) validity(id ID, lifetime time.Duration) (notBefore, notAfter time.Time, err error) {
	if lifetime < 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("identity: negative certificate lifetime %v", lifetime)
	}
	if lifetime == 0 {
		lifetime = DefaultCertLifetime
	}
	now := time.Now()
	notBefore = now.Add(-clockSkew)
	if notBefore.Before(ca.cert.NotBefore) {
		notBefore = ca.cert.NotBefore
	}
	notAfter = ceilSecond(now.Add(lifetime))
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !ca.cert.NotAfter.After(now) {
		return time.Time{}, time.Time{}, fmt.Errorf("identity: cannot issue %s: CA for %q expired at %s", id, ca.trustDomain, ca.cert.NotAfter.Format(time.RFC3339))
	}
	return notBefore, notAfter, nil
}

// IssueWithValidity is Issue with an explicit validity window and no
// capping at the CA's expiry. It exists for tests that need expired or
// not-yet-valid certificates.
func (ca *CA) IssueWithValidity(id ID, notBefore, notAfter time.Time) (*tls.Certificate, error) {
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("identity: cannot issue %s: NotAfter %s is not after NotBefore %s", id, notAfter.Format(time.RFC3339), notBefore.Format(time.RFC3339))
	}
	return ca.issue(id, notBefore, notAfter)
}

// IssuePEM is Issue returning PEM: the leaf certificate and its PKCS #8
// private key.
func (ca *CA) IssuePEM(id ID, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	cert, err := ca.Issue(id, lifetime)
	if err != nil {
		return nil, nil, err
	}
	return encodeTLSCertificate(cert)
}

func encodeTLSCertificate(cert *tls.Certificate) (certPEM, keyPEM []byte, err error) {
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: encoding private key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func (ca *CA) issue(id ID, notBefore, notAfter time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating key: %w", err)
	}
	leaf, err := ca.sign(id, key.Public(), notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func (ca *CA) sign(id ID, pub crypto.PublicKey, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("identity: cannot issue a certificate for an empty ID")
	}
	// Re-validate: an ID built as a struct literal bypasses ParseID.
	if parsed, err := ParseID(id.String()); err != nil || parsed != id {
		return nil, fmt.Errorf("identity: cannot issue %q: not a valid SPIFFE ID", id.String())
	}
	if id.TrustDomain != ca.trustDomain {
		return nil, fmt.Errorf("identity: cannot issue %s: CA is for trust domain %q", id, ca.trustDomain)
	}
	if id.Path == "" {
		return nil, fmt.Errorf("identity: cannot issue %s: a workload ID needs a path; the bare trust domain ID names the CA", id)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"quicmesh"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: issuing %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing issued certificate: %w", err)
	}
	return leaf, nil
}

// ceilSecond rounds t up to a whole second. Certificates store validity
// with one-second precision and encoding truncates, which would shorten a
// lifetime by up to a second (fatal for the sub-second lifetimes tests
// use); rounding up guarantees at least the requested lifetime.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}

// randomSerial returns a random, positive serial number of up to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("identity: generating serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// parseTrustDomain validates a bare trust domain name such as
// "example.org".
func parseTrustDomain(td string) (string, error) {
	id, err := ParseID("spiffe://" + td)
	if err != nil || id.Path != "" {
		return "", fmt.Errorf("identity: invalid trust domain %q: want a lower-case name such as example.org", td)
	}
	return id.TrustDomain, nil
}
