package kube_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

const (
	trustDomain = "cluster.test"
	audience    = "quicmesh-control"
)

// identityClient serves the Identity service, reviewing tokens with the
// real API server as the control plane's service account, on a loopback
// gRPC server, and returns a client of it. Transport security is the
// server's concern (internal/control); this test is about what Certify
// accepts.
func identityClient(t *testing.T, c *kubetest.Cluster, ca *identity.CA, lifetime time.Duration) controlpb.IdentityClient {
	t.Helper()
	reviewer := kube.NewTokenReviewer(controlClient(t, c), audience)
	srv := grpc.NewServer()
	controlpb.RegisterIdentityServer(srv, control.NewIdentityServer(reviewer, ca, lifetime, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return controlpb.NewIdentityClient(conn)
}

// csrFor returns a DER CSR signed by key that asks for claimed (a SPIFFE
// ID in its URI SAN and common name): Certify must ignore both.
func csrFor(t *testing.T, key *ecdsa.PrivateKey, claimed string) []byte {
	t.Helper()
	u, err := url.Parse(claimed)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: claimed},
		URIs:    []*url.URL{u},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// TestCertify: a ServiceAccount token the API server issued for the
// control plane's audience gets a certificate for exactly its own
// service account, whatever the CSR asks for; every other token and every
// CSR whose signature does not verify gets a clear status and no
// certificate.
func TestCertify(t *testing.T) {
	c := kubetest.Get(t)
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "a")
	c.ServiceAccount(t, ns, "b")
	ca, err := identity.NewCA(trustDomain, 0)
	if err != nil {
		t.Fatal(err)
	}
	const lifetime = 2 * time.Hour
	client := identityClient(t, c, ca, lifetime)
	idA := "spiffe://" + trustDomain + "/ns/" + ns + "/sa/a"
	idB := "spiffe://" + trustDomain + "/ns/" + ns + "/sa/b"
	tokenA := c.Token(t, ns, "a", audience, time.Hour)

	t.Run("a token for a gets a's identity, not the one its CSR names", func(t *testing.T) {
		key := newKey(t)
		res, err := client.Certify(context.Background(), &controlpb.CertifyRequest{Csr: csrFor(t, key, idB), Token: tokenA})
		if err != nil {
			t.Fatalf("Certify: %v", err)
		}
		if len(res.Chain) != 1 || len(res.TrustBundle) != 1 {
			t.Fatalf("chain of %d, bundle of %d certificates; want 1 and 1", len(res.Chain), len(res.TrustBundle))
		}
		leaf, err := x509.ParseCertificate(res.Chain[0])
		if err != nil {
			t.Fatal(err)
		}
		id, err := identity.IDFromCert(leaf)
		if err != nil || id.String() != idA {
			t.Fatalf("certified ID %v (%v), want %s", id, err, idA)
		}
		if leaf.Subject.CommonName != "" {
			t.Errorf("the CSR's common name %q reached the certificate", leaf.Subject.CommonName)
		}
		if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
			t.Fatal("the certificate is not for the CSR's key")
		}
		root, err := x509.ParseCertificate(res.TrustBundle[0])
		if err != nil {
			t.Fatal(err)
		}
		if !root.Equal(ca.Cert()) {
			t.Fatal("the trust bundle is not the CA's root")
		}
		pool := x509.NewCertPool()
		pool.AddCert(root)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Fatalf("the certificate does not verify against the bundle: %v", err)
		}
		if got := res.Lifetime.AsDuration(); got < lifetime || got > lifetime+2*time.Minute {
			t.Fatalf("lifetime %v, want %v (plus the back-dating for clock skew)", got, lifetime)
		}
		if left := time.Until(leaf.NotAfter); left < lifetime-time.Minute || left > lifetime+time.Second {
			t.Fatalf("certificate expires in %v, want %v", left, lifetime)
		}
	})

	// A JWT with a's real claims and signature shape: what differs is
	// only what each case changes.
	expired := kubetest.Resign(t, tokenA, c.SigningKey(), func(claims map[string]any) {
		past := time.Now().Add(-2 * time.Hour).Unix()
		claims["iat"], claims["nbf"], claims["exp"] = past-600, past-600, past
	})
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	forged := kubetest.Resign(t, tokenA, otherKey, func(map[string]any) {})
	// The same token re-signed with the right key and unchanged claims is
	// accepted: proof that Resign itself does not break tokens, so the two
	// refusals above are for the expiry and the key.
	resigned := kubetest.Resign(t, tokenA, c.SigningKey(), func(map[string]any) {})

	goodCSR := csrFor(t, newKey(t), idA)
	tests := []struct {
		name  string
		token string
		csr   []byte
		code  codes.Code
		msg   string
	}{
		{"re-signed with the API server's key, unchanged", resigned, goodCSR, codes.OK, ""},
		{"token for another audience", c.Token(t, ns, "a", "someone-else", time.Hour), goodCSR, codes.Unauthenticated, "token rejected"},
		{"token for the API server", c.Token(t, ns, "a", kubetest.Issuer, time.Hour), goodCSR, codes.Unauthenticated, "token rejected"},
		{"expired token", expired, goodCSR, codes.Unauthenticated, "token rejected"},
		{"forged token (another signing key)", forged, goodCSR, codes.Unauthenticated, "token rejected"},
		{"garbage token", "not-a-jwt", goodCSR, codes.Unauthenticated, "token rejected"},
		{"no token", "", goodCSR, codes.Unauthenticated, "no service account token"},
		{"CSR signed by another key", tokenA, swapKey(t, goodCSR, csrFor(t, newKey(t), idA)), codes.InvalidArgument, "signature does not verify"},
		{"CSR with a flipped signature bit", tokenA, flipSignature(t, goodCSR), codes.InvalidArgument, "signature does not verify"},
		{"not a CSR", tokenA, []byte("junk"), codes.InvalidArgument, "parsing the certificate request"},
		{"no CSR", tokenA, nil, codes.InvalidArgument, "no certificate request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := client.Certify(context.Background(), &controlpb.CertifyRequest{Csr: tt.csr, Token: tt.token})
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.msg) {
				t.Fatalf("Certify: %v; want %v containing %q", err, tt.code, tt.msg)
			}
			if tt.code != codes.OK && res != nil {
				t.Fatalf("a refused request got a response: %v", res)
			}
		})
	}

	t.Run("a token of a deleted service account", func(t *testing.T) {
		c.ServiceAccount(t, ns, "gone")
		token := c.Token(t, ns, "gone", audience, time.Hour)
		if err := c.Admin.CoreV1().ServiceAccounts(ns).Delete(context.Background(), "gone", deleteNow); err != nil {
			t.Fatal(err)
		}
		_, err := client.Certify(context.Background(), &controlpb.CertifyRequest{Csr: goodCSR, Token: token})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Certify: %v; want Unauthenticated", err)
		}
	})
}

// csrASN1 is a PKCS #10 CertificationRequest.
type csrASN1 struct {
	Info      asn1.RawValue
	Algorithm pkix.AlgorithmIdentifier
	Signature asn1.BitString
}

// swapKey returns victim's request body (key and all) with signer's
// signature: a request for a key its sender does not hold.
func swapKey(t *testing.T, signer, victim []byte) []byte {
	t.Helper()
	var s, v csrASN1
	if _, err := asn1.Unmarshal(signer, &s); err != nil {
		t.Fatal(err)
	}
	if _, err := asn1.Unmarshal(victim, &v); err != nil {
		t.Fatal(err)
	}
	v.Signature = s.Signature
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func flipSignature(t *testing.T, der []byte) []byte {
	t.Helper()
	var r csrASN1
	if _, err := asn1.Unmarshal(der, &r); err != nil {
		t.Fatal(err)
	}
	r.Signature.Bytes = append([]byte(nil), r.Signature.Bytes...)
	r.Signature.Bytes[len(r.Signature.Bytes)/2] ^= 0x01
	out, err := asn1.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
