package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewCA(t *testing.T) {
	before := time.Now()
	ca, err := NewCA("example.org", 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert()
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root is not a CA: IsCA=%v BC=%v KU=%v", c.IsCA, c.BasicConstraintsValid, c.KeyUsage)
	}
	if c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("MaxPathLen = %d (zero=%v), want 0", c.MaxPathLen, c.MaxPathLenZero)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("URIs = %v, want [spiffe://example.org]", c.URIs)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if d := before.Sub(c.NotBefore); d < 59*time.Second || d > 61*time.Second {
		t.Errorf("NotBefore is %v before now, want ~1m", d)
	}
	if d := c.NotAfter.Sub(before); d < 2*time.Hour-time.Second || d > 2*time.Hour+time.Second {
		t.Errorf("NotAfter is %v after now, want ~2h", d)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", c.SerialNumber)
	}
	other, _ := NewCA("example.org", time.Hour)
	if other.Cert().SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("two CAs got the same serial number")
	}
	if ca.TrustDomain() != "example.org" {
		t.Errorf("TrustDomain = %q", ca.TrustDomain())
	}
	block, rest := pem.Decode(ca.BundlePEM())
	if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 || string(block.Bytes) != string(c.Raw) {
		t.Error("BundlePEM is not exactly the root certificate")
	}
	b := ca.BundlePEM()
	b[0] = 'X'
	if ca.BundlePEM()[0] == 'X' {
		t.Error("BundlePEM returns the CA's internal buffer")
	}
}

func TestNewCAErrors(t *testing.T) {
	tests := []struct {
		td       string
		lifetime time.Duration
		wantErr  string
	}{
		{"", time.Hour, "invalid trust domain"},
		{"Example.org", time.Hour, "invalid trust domain"},
		{"example.org/path", time.Hour, "invalid trust domain"},
		{"spiffe://example.org", time.Hour, "invalid trust domain"},
		{"example.org:443", time.Hour, "invalid trust domain"},
		{"example.org", -time.Second, "negative CA lifetime"},
	}
	for _, tt := range tests {
		t.Run(tt.td, func(t *testing.T) {
			_, err := NewCA(tt.td, tt.lifetime)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewCA(%q, %v) error = %v, want %q", tt.td, tt.lifetime, err, tt.wantErr)
			}
		})
	}
	ca, err := NewCA("example.org", 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(ca.Cert().NotAfter); d < DefaultCALifetime-time.Minute {
		t.Errorf("lifetime 0 gave %v, want DefaultCALifetime", d)
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, "example.org")
	id := MustParseID("spiffe://example.org/ns/default/sa/web")
	before := time.Now()
	cert, err := ca.Issue(id, 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != 1 {
		t.Fatalf("chain has %d certificates, want just the leaf", len(cert.Certificate))
	}
	leaf := cert.Leaf
	if leaf == nil || string(leaf.Raw) != string(cert.Certificate[0]) {
		t.Fatal("Leaf not populated with the chain's first certificate")
	}
	if got, err := IDFromCert(leaf); err != nil || got != id {
		t.Errorf("IDFromCert = %v, %v; want %v", got, err, id)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want DigitalSignature only", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v, want ServerAuth, ClientAuth", leaf.ExtKeyUsage)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has non-URI SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() || !key.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("private key is %T and does not match a P-256 leaf", cert.PrivateKey)
	}
	if d := leaf.NotAfter.Sub(before); d < 30*time.Minute-time.Second || d > 30*time.Minute+time.Second {
		t.Errorf("lifetime %v, want 30m", d)
	}
	if leaf.NotBefore.After(before.Add(-59 * time.Second)) {
		t.Errorf("NotBefore %v not back-dated for clock skew", leaf.NotBefore)
	}
	if leaf.NotBefore.Before(ca.Cert().NotBefore) {
		t.Errorf("leaf NotBefore %v precedes the CA's %v", leaf.NotBefore, ca.Cert().NotBefore)
	}

	// Round trip: the leaf verifies against the bundle for both usages.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: newTestCA(t, "example.org").Pool()}); err == nil {
		t.Error("leaf verifies against an unrelated CA")
	}
	// The pair is usable by crypto/tls.
	certPEM, keyPEM, err := encodeTLSCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("X509KeyPair: %v", err)
	}

	def, err := ca.Issue(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The test CA lives an hour, so the default 24h is capped to it.
	if !def.Leaf.NotAfter.Equal(ca.Cert().NotAfter) {
		t.Errorf("NotAfter %v not capped at the CA's %v", def.Leaf.NotAfter, ca.Cert().NotAfter)
	}
	long, err := NewCA("example.org", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	def, err = long.Issue(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(def.Leaf.NotAfter); d < DefaultCertLifetime-time.Minute || d > DefaultCertLifetime+time.Second {
		t.Errorf("lifetime 0 gave %v, want DefaultCertLifetime", d)
	}
}

func TestIssueErrors(t *testing.T) {
	ca := newTestCA(t, "example.org")
	tests := []struct {
		name     string
		id       ID
		lifetime time.Duration
		wantErr  string
	}{
		{"other trust domain", MustParseID("spiffe://other.org/web"), time.Hour, `CA is for trust domain "example.org"`},
		{"zero ID", ID{}, time.Hour, "empty ID"},
		{"trust domain ID", MustParseID("spiffe://example.org"), time.Hour, "needs a path"},
		{"invalid literal", ID{TrustDomain: "example.org", Path: "/a b"}, time.Hour, "not a valid SPIFFE ID"},
		{"literal without slash", ID{TrustDomain: "example.org", Path: "web"}, time.Hour, "not a valid SPIFFE ID"},
		{"negative lifetime", MustParseID("spiffe://example.org/web"), -time.Hour, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Issue(tt.id, tt.lifetime)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Issue error = %v, want %q", err, tt.wantErr)
			}
		})
	}
	if _, err := ca.IssueWithValidity(MustParseID("spiffe://example.org/web"), time.Now(), time.Now().Add(-time.Hour)); err == nil {
		t.Error("IssueWithValidity accepted NotAfter before NotBefore")
	}
}

func TestIssueFromExpiredCA(t *testing.T) {
	ca := newTestCA(t, "example.org")
	ca.cert.NotAfter = time.Now().Add(-time.Second) // simulate an expired root
	_, err := ca.Issue(MustParseID("spiffe://example.org/web"), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Issue from an expired CA: %v", err)
	}
}

func TestIssueWithValidity(t *testing.T) {
	ca := newTestCA(t, "example.org")
	id := MustParseID("spiffe://example.org/old")
	nb, na := time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	cert, err := ca.IssueWithValidity(id, nb, na)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.Leaf.NotAfter.Equal(na.Truncate(time.Second)) || !cert.Leaf.NotBefore.Equal(nb.Truncate(time.Second)) {
		t.Errorf("validity %v..%v, want %v..%v", cert.Leaf.NotBefore, cert.Leaf.NotAfter, nb, na)
	}
	_, err = cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()})
	if inv, ok := errors.AsType[x509.CertificateInvalidError](err); !ok || inv.Reason != x509.Expired {
		t.Fatalf("verify of expired leaf: %v, want x509 Expired", err)
	}
}

func TestIssuePEM(t *testing.T) {
	ca := newTestCA(t, "example.org")
	id := MustParseID("spiffe://example.org/web")
	certPEM, keyPEM, err := ca.IssuePEM(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := IDFromCert(pair.Leaf); err != nil || got != id {
		t.Fatalf("ID = %v, %v", got, err)
	}
	if block, _ := pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key PEM is not PKCS #8")
	}
	if _, _, err := ca.IssuePEM(MustParseID("spiffe://other.org/web"), time.Hour); err == nil {
		t.Fatal("IssuePEM for another trust domain succeeded")
	}
}

func TestCAWriteLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, "example.org")
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	loaded, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if loaded.TrustDomain() != "example.org" || !loaded.Cert().Equal(ca.Cert()) {
		t.Fatalf("loaded CA differs: %q", loaded.TrustDomain())
	}
	// A certificate issued by the loaded CA verifies against the original.
	cert := issue(t, loaded, MustParseID("spiffe://example.org/web"))
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Fatalf("leaf from reloaded CA: %v", err)
	}

	// Refuse to overwrite, and write nothing if either file exists.
	err = newTestCA(t, "example.org").WriteFiles(dir)
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second WriteFiles: %v", err)
	}
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, CAKeyFile), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = ca.WriteFiles(dir2)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir2, CAKeyFile)) {
		t.Fatalf("WriteFiles over an existing key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, CACertFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("WriteFiles left %s behind: %v", CACertFile, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, CAKeyFile)); string(b) != "mine" {
		t.Fatal("WriteFiles modified an existing key")
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "example.org")
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	goodCert, goodKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leafPEM, leafKeyPEM, err := ca.IssuePEM(MustParseID("spiffe://example.org/web"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	if err := newTestCA(t, "example.org").WriteFiles(otherDir); err != nil {
		t.Fatal(err)
	}
	noURI := mint(t, ca, func(c *x509.Certificate) {
		c.IsCA, c.KeyUsage, c.URIs, c.ExtKeyUsage = true, x509.KeyUsageCertSign, nil, nil
	})
	noURIPEM, noURIKey, _ := encodeTLSCertificate(noURI)
	workloadURI := mint(t, ca, func(c *x509.Certificate) { c.IsCA, c.KeyUsage, c.ExtKeyUsage = true, x509.KeyUsageCertSign, nil })
	workloadPEM, workloadKey, _ := encodeTLSCertificate(workloadURI)

	tests := []struct {
		name      string
		cert, key string
		wantErr   string
	}{
		{"missing cert", filepath.Join(dir, "nope.crt"), goodKey, "reading CA certificate " + filepath.Join(dir, "nope.crt")},
		{"missing key", goodCert, filepath.Join(dir, "nope.key"), "reading CA key " + filepath.Join(dir, "nope.key")},
		{"garbage cert", write("garbage.crt", []byte("hello")), goodKey, "parsing CA certificate " + filepath.Join(dir, "garbage.crt")},
		{"garbage key", goodCert, write("garbage.key", []byte("hello")), "parsing CA key " + filepath.Join(dir, "garbage.key")},
		{"leaf as CA", write("leaf.crt", leafPEM), write("leaf.key", leafKeyPEM), "is not a CA"},
		{"mismatched key", goodCert, filepath.Join(otherDir, CAKeyFile), "does not match"},
		{"no URI SAN", write("nouri.crt", noURIPEM), write("nouri.key", noURIKey), "0 URI SANs"},
		{"workload URI SAN", write("wl.crt", workloadPEM), write("wl.key", workloadKey), "want a trust domain ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCA(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadCA error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestCAPoolIsFresh(t *testing.T) {
	ca := newTestCA(t, "example.org")
	p := ca.Pool()
	p.AddCert(newTestCA(t, "example.org").Cert())
	cert := issue(t, ca, MustParseID("spiffe://example.org/a"))
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Fatal(err)
	}
	if !ca.Pool().Equal(pools(ca)) {
		t.Fatal("modifying a returned pool changed the CA's pool")
	}
}
