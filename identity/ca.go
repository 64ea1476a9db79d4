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
	"slices"
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

	// CA file names used by WriteFiles and LoadCADir. CARootsFile exists
	// only for an intermediate CA: the trust anchors its chain ends in.
	CACertFile  = "ca.crt"
	CAKeyFile   = "ca.key"
	CARootsFile = "root.crt"
)

// CA is a minimal built-in certificate authority for one SPIFFE trust
// domain. It is either a self-signed root that issues leaf workload
// certificates (X.509-SVIDs) directly, or an intermediate issued by a root
// the operator keeps offline (NewIntermediateCA): then its leaves carry
// the intermediate chain and peers trust only the root. A CA is immutable
// and safe for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// chain is what follows a leaf in the chain it presents: cert and the
	// CAs above it up to, not including, a root. Empty for a root CA.
	chain []*x509.Certificate
	// roots are the trust anchors: cert itself for a root CA.
	roots       []*x509.Certificate
	trustDomain string
}

// NewCA creates a self-signed ECDSA P-256 root for trustDomain, valid from
// one minute ago (to tolerate clock skew) for lifetime (0 means
// DefaultCALifetime; NotAfter is rounded up to a whole second). The root
// carries the URI SAN spiffe://<trustDomain> and a random 128-bit serial.
func NewCA(trustDomain string, lifetime time.Duration) (*CA, error) {
	return NewRootCA(trustDomain, lifetime, 0)
}

// NewRootCA is NewCA with a path length constraint of maxPathLen: 0 (what
// NewCA makes) lets the root sign leaves only; 1 lets it sign intermediate
// CAs (NewIntermediateCA) that sign leaves, which is what a root kept
// offline needs.
func NewRootCA(trustDomain string, lifetime time.Duration, maxPathLen int) (*CA, error) {
	if maxPathLen < 0 {
		return nil, fmt.Errorf("identity: negative CA path length %d", maxPathLen)
	}
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
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0, // 0: leaves only, no intermediates
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
	return &CA{cert: cert, key: key, roots: []*x509.Certificate{cert}, trustDomain: td}, nil
}

// DefaultIntermediateLifetime is the lifetime of an intermediate CA when
// NewIntermediateCA is given 0: the operator brings the offline root out
// about once a quarter.
const DefaultIntermediateLifetime = 90 * 24 * time.Hour

// NewIntermediateCA issues, from parent (normally a root kept offline,
// made with NewRootCA(td, _, 1)), an intermediate CA of the same trust
// domain with a fresh ECDSA P-256 key, valid from one minute ago for
// lifetime (0: DefaultIntermediateLifetime) but never past parent's
// expiry. The intermediate signs leaves only (path length 0) and carries
// a critical name constraint that permits only URIs of the trust domain,
// so even its key, which lives online in the control plane, cannot sign a
// verifiable certificate of another trust domain. Its trust anchors are
// parent's: leaves it issues present the chain and peers keep only the
// root. parent must allow a CA below it (its path length is not 0).
func NewIntermediateCA(parent *CA, lifetime time.Duration) (*CA, error) {
	if parent == nil {
		return nil, errors.New("identity: NewIntermediateCA: nil parent CA")
	}
	if lifetime < 0 {
		return nil, fmt.Errorf("identity: negative CA lifetime %v", lifetime)
	}
	if lifetime == 0 {
		lifetime = DefaultIntermediateLifetime
	}
	if parent.cert.MaxPathLen == 0 && parent.cert.MaxPathLenZero {
		return nil, fmt.Errorf("identity: CA %q has path length 0: it may sign leaves only, not an intermediate CA (a root for intermediates needs path length 1: quicmesh ca init --path-len 1)", parent.cert.Subject.CommonName)
	}
	now := time.Now()
	if !parent.cert.NotAfter.After(now) {
		return nil, fmt.Errorf("identity: CA %q expired at %s", parent.cert.Subject.CommonName, parent.cert.NotAfter.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating intermediate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	td := parent.trustDomain
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(parent.cert.NotBefore) {
		notBefore = parent.cert.NotBefore
	}
	notAfter := ceilSecond(now.Add(lifetime))
	if notAfter.After(parent.cert.NotAfter) {
		notAfter = parent.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"quicmesh"}, CommonName: "quicmesh intermediate CA " + td},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // leaves only
		URIs:                  []*url.URL{ID{TrustDomain: td}.URL()},
		// RFC 5280 wants name constraints critical; Go marks the whole
		// extension critical with this flag. A URI constraint "td"
		// matches the URI's host: spiffe://td/... (x509 also lets it
		// match subdomains of td; verifyPeer's trust-domain check of the
		// chain refuses those).
		PermittedURIDomains:         []string{td},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.cert, key.Public(), parent.key)
	if err != nil {
		return nil, fmt.Errorf("identity: creating intermediate CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing intermediate CA certificate: %w", err)
	}
	ca := &CA{
		cert:        cert,
		key:         key,
		chain:       append([]*x509.Certificate{cert}, parent.chain...),
		roots:       parent.roots,
		trustDomain: td,
	}
	// Verify what we made as a peer would, so a parent that cannot
	// anchor it (say, path length exhausted higher up) fails here and
	// not at the first handshake.
	if err := ca.verifyChain(); err != nil {
		return nil, err
	}
	return ca, nil
}

// verifyChain checks that ca's certificate chains to its roots through
// its chain, at the present time.
func (ca *CA) verifyChain() error {
	opts := x509.VerifyOptions{Roots: ca.Pool(), Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	for _, c := range ca.chain[min(1, len(ca.chain)):] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := ca.cert.Verify(opts); err != nil {
		return fmt.Errorf("identity: CA certificate %q does not chain to its root: %w", ca.cert.Subject.CommonName, err)
	}
	return nil
}

// LoadCADir loads the CA that WriteFiles wrote into dir: a root CA
// (DIR/ca.crt, DIR/ca.key) or, if DIR/root.crt exists, an intermediate
// (LoadIntermediateCA).
func LoadCADir(dir string) (*CA, error) {
	certPath, keyPath, rootsPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), filepath.Join(dir, CARootsFile)
	if _, err := os.Stat(rootsPath); err == nil {
		return LoadIntermediateCA(certPath, keyPath, rootsPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("identity: checking %s: %w", rootsPath, err)
	}
	return LoadCA(certPath, keyPath)
}

// LoadIntermediateCA reads an intermediate CA: certPEMPath holds its
// certificate followed by any CAs above it but the root, keyPEMPath its
// key, rootsPEMPath the trust anchors (the root) its chain must verify
// against now. The roots, not the intermediate, are what BundlePEM and
// Pool give peers.
func LoadIntermediateCA(certPEMPath, keyPEMPath, rootsPEMPath string) (*CA, error) {
	ca, err := loadCA(certPEMPath, keyPEMPath)
	if err != nil {
		return nil, err
	}
	rootsPEM, err := os.ReadFile(rootsPEMPath)
	if err != nil {
		return nil, fmt.Errorf("identity: reading CA roots %s: %w", rootsPEMPath, err)
	}
	roots, err := parseCertsPEM(rootsPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: parsing CA roots %s: %w", rootsPEMPath, err)
	}
	ca.roots = roots
	if err := ca.verifyChain(); err != nil {
		return nil, fmt.Errorf("%w (roots %s)", err, rootsPEMPath)
	}
	return ca, nil
}

// LoadCA reads a root CA written by WriteFiles (or any self-signed ECDSA
// CA whose certificate carries a SPIFFE trust-domain URI SAN such as
// spiffe://example.org). An intermediate needs its roots:
// LoadIntermediateCA or LoadCADir. Errors name the offending file.
func LoadCA(certPEMPath, keyPEMPath string) (*CA, error) {
	ca, err := loadCA(certPEMPath, keyPEMPath)
	if err != nil {
		return nil, err
	}
	if len(ca.chain) > 1 || ca.cert.CheckSignatureFrom(ca.cert) != nil {
		return nil, fmt.Errorf("identity: CA certificate %s is not a self-signed root: an intermediate CA needs its root (%s next to it, or LoadIntermediateCA)", certPEMPath, CARootsFile)
	}
	ca.chain = nil
	ca.roots = []*x509.Certificate{ca.cert}
	return ca, nil
}

// loadCA reads a CA certificate (with the chain above it, if any) and its
// key, checking that they are a SPIFFE CA and match.
func loadCA(certPEMPath, keyPEMPath string) (*CA, error) {
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
	return &CA{cert: cert, key: key, chain: certs, trustDomain: tdID.TrustDomain}, nil
}

// IsIntermediate reports whether the CA is an intermediate, whose leaves
// carry a chain to roots other than its own certificate.
func (ca *CA) IsIntermediate() bool { return len(ca.chain) > 0 }

// WriteFiles writes the CA certificate to dir/ca.crt (mode 0644; for an
// intermediate, followed by the CAs above it but the root), its private
// key (PKCS #8) to dir/ca.key (mode 0600) and, for an intermediate, its
// roots to dir/root.crt, creating dir (0755) if needed. It refuses to
// overwrite any of them: if one exists it writes nothing and returns an
// error naming it.
func (ca *CA) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: creating CA directory: %w", err)
	}
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	rootsPath := filepath.Join(dir, CARootsFile)
	for _, p := range []string{certPath, keyPath, rootsPath} {
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
	certs := ca.chain
	if len(certs) == 0 {
		certs = []*x509.Certificate{ca.cert}
	}
	if err := writeNewFile(certPath, encodeCertsPEM(certs), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	if ca.IsIntermediate() {
		if err := writeNewFile(rootsPath, ca.BundlePEM(), 0o644); err != nil {
			os.Remove(keyPath)
			os.Remove(certPath)
			return err
		}
	}
	return nil
}

func encodeCertsPEM(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
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

// Cert returns the CA's own certificate, the one that signs leaves: the
// root of a root CA, the intermediate of an intermediate. Callers must
// not modify it.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// Chain returns the certificates a leaf of this CA presents after itself:
// none for a root CA; the intermediate and any CA above it but the root
// otherwise. Callers must not modify them.
func (ca *CA) Chain() []*x509.Certificate { return slices.Clone(ca.chain) }

// Roots returns the trust anchors: the CA's own certificate for a root
// CA, the root it was issued from for an intermediate. Callers must not
// modify them.
func (ca *CA) Roots() []*x509.Certificate { return slices.Clone(ca.roots) }

// BundlePEM returns the PEM-encoded roots: the trust bundle that
// workloads verify peers against.
func (ca *CA) BundlePEM() []byte { return encodeCertsPEM(ca.roots) }

// Pool returns a new CertPool holding only the CA's roots.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range ca.roots {
		pool.AddCert(c)
	}
	return pool
}

// Issue mints a workload certificate for id, which must be a workload ID
// (non-empty path) in the CA's trust domain. The leaf has a fresh ECDSA
// P-256 key, exactly one URI SAN (id), is usable for both server and
// client authentication, and is valid from one minute ago for lifetime (0
// means DefaultCertLifetime; NotAfter is rounded up to a whole second),
// but never past the CA's own expiry. The
// returned chain is the leaf, with Leaf populated, then Chain() (nothing
// for a root CA); peers hold the roots in their bundle.
func (ca *CA) Issue(id ID, lifetime time.Duration) (*tls.Certificate, error) {
	return ca.IssueWith(id, lifetime, LeafOptions{})
}

// LeafOptions are what a workload certificate may carry beyond its SPIFFE
// ID.
type LeafOptions struct {
	// DNSNames are added as DNS SANs (each checked by ParseDNSName), for
	// clients outside the mesh that verify a host name, such as a
	// standard HTTP/3 client of a sidecar's inbound.h3 listener. They are
	// no identity: peers in the mesh authenticate and authorize the URI
	// SAN alone.
	DNSNames []string
}

// IssueWith is Issue with opts.
func (ca *CA) IssueWith(id ID, lifetime time.Duration, opts LeafOptions) (*tls.Certificate, error) {
	dnsNames, err := parseDNSNames(opts.DNSNames)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := ca.validity(id, lifetime)
	if err != nil {
		return nil, err
	}
	return ca.issue(id, notBefore, notAfter, dnsNames)
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
	return ca.sign(id, pub, notBefore, notAfter, nil)
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
	return ca.issue(id, notBefore, notAfter, nil)
}

// IssuePEM is Issue returning PEM: the leaf certificate and its PKCS #8
// private key.
func (ca *CA) IssuePEM(id ID, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	return ca.IssuePEMWith(id, lifetime, LeafOptions{})
}

// IssuePEMWith is IssuePEM with opts.
func (ca *CA) IssuePEMWith(id ID, lifetime time.Duration, opts LeafOptions) (certPEM, keyPEM []byte, err error) {
	cert, err := ca.IssueWith(id, lifetime, opts)
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

func (ca *CA) issue(id ID, notBefore, notAfter time.Time, dnsNames []string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generating key: %w", err)
	}
	leaf, err := ca.sign(id, key.Public(), notBefore, notAfter, dnsNames)
	if err != nil {
		return nil, err
	}
	chain := [][]byte{leaf.Raw}
	for _, c := range ca.chain {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// sign makes the leaf; dnsNames were checked by parseDNSNames.
func (ca *CA) sign(id ID, pub crypto.PublicKey, notBefore, notAfter time.Time, dnsNames []string) (*x509.Certificate, error) {
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
		DNSNames:              dnsNames,
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
