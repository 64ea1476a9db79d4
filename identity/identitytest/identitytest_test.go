package identitytest_test

import (
	"crypto/x509"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
)

func TestHelpers(t *testing.T) {
	ca := identitytest.NewCA(t, "example.org")
	if ca.TrustDomain() != "example.org" {
		t.Fatalf("TrustDomain = %q", ca.TrustDomain())
	}
	p := identitytest.Provider(t, ca, "spiffe://example.org/ns/default/sa/web")
	id, err := identity.LocalID(p)
	if err != nil || id.String() != "spiffe://example.org/ns/default/sa/web" {
		t.Fatalf("LocalID = %v, %v", id, err)
	}
	cert, _ := p.Certificate()
	roots, err := identity.LocalBundle(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
}

// fatalTB records Fatalf instead of stopping the goroutine.
type fatalTB struct {
	testing.TB
	failed bool
}

func (f *fatalTB) Helper()               {}
func (f *fatalTB) Fatalf(string, ...any) { f.failed = true }

func TestHelpersFailTheTest(t *testing.T) {
	tb := &fatalTB{TB: t}
	identitytest.NewCA(tb, "Not A Domain")
	if !tb.failed {
		t.Fatal("NewCA with an invalid trust domain did not fail the test")
	}
	tb = &fatalTB{TB: t}
	ca := identitytest.NewCA(t, "example.org")
	identitytest.Issue(tb, ca, "spiffe://other.org/x")
	if !tb.failed {
		t.Fatal("Issue for another trust domain did not fail the test")
	}
}
