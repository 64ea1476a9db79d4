// Package identitytest provides helpers for tests that need mesh
// identities: a throwaway CA and providers holding certificates it issued.
package identitytest

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
)

// CALifetime is the lifetime of CAs made by NewCA.
const CALifetime = 24 * time.Hour

// NewCA returns a fresh in-memory CA for trust domain td (e.g.
// "example.org"), failing the test on error.
func NewCA(t testing.TB, td string) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(td, CALifetime)
	if err != nil {
		t.Fatalf("identitytest: NewCA(%q): %v", td, err)
	}
	return ca
}

// Provider returns a StaticProvider holding a certificate issued by ca for
// id (a SPIFFE ID such as "spiffe://example.org/ns/default/sa/web") and
// trusting ca's root, failing the test on error.
func Provider(t testing.TB, ca *identity.CA, id string) *identity.StaticProvider {
	t.Helper()
	cert := Issue(t, ca, id)
	return identity.NewStaticProvider(cert, ca.Pool())
}

// Issue returns a certificate issued by ca for id with the default
// lifetime, failing the test on error.
func Issue(t testing.TB, ca *identity.CA, id string) *tls.Certificate {
	t.Helper()
	sid, err := identity.ParseID(id)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	cert, err := ca.Issue(sid, identity.DefaultCertLifetime)
	if err != nil {
		t.Fatalf("identitytest: issuing %s: %v", id, err)
	}
	return cert
}
