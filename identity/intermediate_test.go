package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newOfflineRoot(t *testing.T, td string) *CA {
	t.Helper()
	root, err := NewRootCA(td, 2*time.Hour, 1)
	if err != nil {
		t.Fatalf("NewRootCA(%q, path len 1): %v", td, err)
	}
	return root
}

// TestIntermediateCA: leaves of an intermediate carry it in their chain,
// the bundle is the root alone, and two peers that hold only the root
// verify each other.
func TestIntermediateCA(t *testing.T) {
	root := newOfflineRoot(t, "example.org")
	inter, err := NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ic := inter.Cert()
	if !ic.IsCA || ic.MaxPathLen != 0 || !ic.MaxPathLenZero || ic.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("intermediate: IsCA %v MaxPathLen %d zero %v usage %v; want a CA signing leaves only", ic.IsCA, ic.MaxPathLen, ic.MaxPathLenZero, ic.KeyUsage)
	}
	if len(ic.PermittedURIDomains) != 1 || ic.PermittedURIDomains[0] != "example.org" || !ic.PermittedDNSDomainsCritical {
		t.Errorf("intermediate name constraints: URI %v critical %v; want [example.org], critical", ic.PermittedURIDomains, ic.PermittedDNSDomainsCritical)
	}
	if ic.CheckSignatureFrom(root.Cert()) != nil {
		t.Error("intermediate is not signed by the root")
	}
	if !inter.IsIntermediate() || root.IsIntermediate() {
		t.Errorf("IsIntermediate: intermediate %v, root %v", inter.IsIntermediate(), root.IsIntermediate())
	}
	if got := inter.Roots(); len(got) != 1 || !got[0].Equal(root.Cert()) {
		t.Fatalf("intermediate's roots are not the root: %d certificates", len(got))
	}
	if string(inter.BundlePEM()) != string(root.BundlePEM()) {
		t.Error("intermediate's bundle is not the root's")
	}

	client := issue(t, inter, MustParseID("spiffe://example.org/ns/a/sa/client"))
	server := issue(t, inter, MustParseID("spiffe://example.org/ns/b/sa/server"))
	if len(client.Certificate) != 2 {
		t.Fatalf("leaf chain has %d certificates, want leaf + intermediate", len(client.Certificate))
	}
	if ic2, err := x509.ParseCertificate(client.Certificate[1]); err != nil || !ic2.Equal(ic) {
		t.Fatalf("second certificate of the chain is not the intermediate (%v)", err)
	}
	// Nothing but the root is trusted: the intermediate must come from
	// the presented chain.
	rootOnly := root.Pool()
	if _, err := client.Leaf.Verify(x509.VerifyOptions{Roots: rootOnly, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("leaf verified against the root without its intermediate: the test would prove nothing")
	}
	serverID := MustParseID("spiffe://example.org/ns/b/sa/server")
	res := handshake(t,
		ServerConfig(NewStaticProvider(server, rootOnly), AuthorizeID(MustParseID("spiffe://example.org/ns/a/sa/client")), nil),
		ClientConfig(NewStaticProvider(client, rootOnly), serverID, nil))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("mutual TLS with intermediate-issued leaves and root-only bundles: server %v, client %v", res.serverErr, res.clientErr)
	}
	if id, err := PeerID(res.clientState); err != nil || id != serverID {
		t.Fatalf("client saw peer %v (%v), want %s", id, err, serverID)
	}

	// A leaf that leaves out the intermediate is refused.
	bare := &tls.Certificate{Certificate: client.Certificate[:1], PrivateKey: client.PrivateKey, Leaf: client.Leaf}
	res = handshake(t,
		ServerConfig(NewStaticProvider(server, rootOnly), nil, nil),
		ClientConfig(NewStaticProvider(bare, rootOnly), serverID, nil))
	if res.serverErr == nil {
		t.Fatal("server accepted a client leaf without its intermediate")
	}
}

// TestIntermediateNameConstraint: the intermediate's key cannot make a
// verifiable certificate for another trust domain, even when a peer's
// bundle for that trust domain holds the root.
func TestIntermediateNameConstraint(t *testing.T) {
	root := newOfflineRoot(t, "example.org")
	inter, err := NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inter.Issue(MustParseID("spiffe://other.org/web"), time.Hour); err == nil {
		t.Fatal("Issue for another trust domain succeeded")
	}
	for _, host := range []string{"other.org", "example.org.evil"} {
		forged := mint(t, inter, func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "spiffe", Host: host, Path: "/web"}} })
		_, err := forged.Leaf.Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: chainPool(inter), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if _, ok := errors.AsType[x509.CertificateInvalidError](err); !ok || !strings.Contains(err.Error(), "constraint") {
			t.Errorf("leaf for spiffe://%s/web signed by the intermediate: %v; want a name constraint violation", host, err)
		}
	}
	good := mint(t, inter, nil)
	if _, err := good.Leaf.Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: chainPool(inter), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("minted leaf of the trust domain: %v", err)
	}
}

// chainPool is the intermediates pool a peer builds from a presented
// chain.
func chainPool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range ca.chain {
		p.AddCert(c)
	}
	return p
}

func TestIntermediateCAErrors(t *testing.T) {
	leavesOnly := newTestCA(t, "example.org")
	if _, err := NewIntermediateCA(leavesOnly, time.Hour); err == nil || !strings.Contains(err.Error(), "path length 0") {
		t.Fatalf("intermediate from a path-length-0 root: %v", err)
	}
	root := newOfflineRoot(t, "example.org")
	inter, err := NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewIntermediateCA(inter, time.Hour); err == nil {
		t.Fatal("an intermediate issued another intermediate")
	}
	if _, err := NewIntermediateCA(root, -time.Second); err == nil {
		t.Fatal("negative lifetime accepted")
	}
	if _, err := NewRootCA("example.org", time.Hour, -1); err == nil {
		t.Fatal("negative path length accepted")
	}
	// Never outlives the root; the default is DefaultIntermediateLifetime
	// capped the same way.
	long, err := NewIntermediateCA(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !long.Cert().NotAfter.Equal(root.Cert().NotAfter) {
		t.Errorf("intermediate NotAfter %v, want capped at the root's %v", long.Cert().NotAfter, root.Cert().NotAfter)
	}
	// A leaf is capped at the intermediate's expiry, not the root's.
	leaf := issue(t, inter, MustParseID("spiffe://example.org/web"))
	if _, err := inter.Issue(MustParseID("spiffe://example.org/web"), 10*time.Hour); err != nil {
		t.Fatal(err)
	}
	capped, _ := inter.Issue(MustParseID("spiffe://example.org/web"), 10*time.Hour)
	if capped.Leaf.NotAfter.After(inter.Cert().NotAfter) || leaf.Leaf.NotAfter.After(inter.Cert().NotAfter) {
		t.Errorf("leaf outlives the intermediate: %v > %v", capped.Leaf.NotAfter, inter.Cert().NotAfter)
	}
}

func TestIntermediateCAWriteLoad(t *testing.T) {
	root := newOfflineRoot(t, "example.org")
	inter, err := NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "issuer")
	if err := inter.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600, CARootsFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	loaded, err := LoadCADir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.IsIntermediate() || !loaded.Cert().Equal(inter.Cert()) || loaded.TrustDomain() != "example.org" {
		t.Fatalf("LoadCADir: intermediate %v, same certificate %v", loaded.IsIntermediate(), loaded.Cert().Equal(inter.Cert()))
	}
	if string(loaded.BundlePEM()) != string(root.BundlePEM()) {
		t.Fatal("loaded intermediate's bundle is not the root")
	}
	leaf := issue(t, loaded, MustParseID("spiffe://example.org/web"))
	inters := x509.NewCertPool()
	for _, der := range leaf.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inters.AddCert(c)
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: inters}); err != nil {
		t.Fatalf("leaf of the reloaded intermediate against the root: %v", err)
	}

	// A root CA directory still loads as a root.
	rootDir := t.TempDir()
	if err := root.WriteFiles(rootDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootDir, CARootsFile)); err == nil {
		t.Fatal("a root CA wrote root.crt")
	}
	if r, err := LoadCADir(rootDir); err != nil || r.IsIntermediate() || !r.Cert().Equal(root.Cert()) {
		t.Fatalf("LoadCADir of a root: %v", err)
	}

	// LoadCA alone refuses an intermediate: without its root it would
	// hand peers the intermediate as their trust anchor.
	if _, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)); err == nil || !strings.Contains(err.Error(), "not a self-signed root") {
		t.Fatalf("LoadCA of an intermediate: %v", err)
	}
	// The wrong root is refused at load, not at the first handshake.
	other := newOfflineRoot(t, "example.org")
	if err := os.WriteFile(filepath.Join(dir, CARootsFile), other.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCADir(dir); err == nil || !strings.Contains(err.Error(), "does not chain to its root") {
		t.Fatalf("LoadCADir with another root: %v", err)
	}
	// Writing refuses to overwrite root.crt too.
	if err := inter.WriteFiles(dir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second WriteFiles: %v", err)
	}
}
