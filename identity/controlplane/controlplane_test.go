package controlplane_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/controlplane"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// caCertifier certifies like the control plane, from an in-process CA,
// for the token "good", and fails while down is set. The real service is
// tested against a real API server in cmd/quicmesh-control.
type caCertifier struct {
	ca       *identity.CA
	lifetime time.Duration
	down     atomic.Bool
	calls    atomic.Int32
}

var errDown = errors.New("control plane down")

func (c *caCertifier) Certify(_ context.Context, req *controlpb.CertifyRequest, _ ...grpc.CallOption) (*controlpb.CertifyResponse, error) {
	c.calls.Add(1)
	if c.down.Load() {
		return nil, errDown
	}
	if req.Token != "good" {
		return nil, errors.New("token rejected")
	}
	csr, err := x509.ParseCertificateRequest(req.Csr)
	if err != nil {
		return nil, err
	}
	leaf, err := c.ca.Certify(identity.MustParseID("spiffe://td.test/ns/ns/sa/web"), csr.PublicKey, c.lifetime)
	if err != nil {
		return nil, err
	}
	return &controlpb.CertifyResponse{Chain: [][]byte{leaf.Raw}, TrustBundle: [][]byte{c.ca.Cert().Raw}, Lifetime: durationpb.New(c.lifetime)}, nil
}

func tokenFile(t *testing.T, token string) string {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProvider(t *testing.T) {
	ca, err := identity.NewCA("td.test", 0)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("fails closed until certified", func(t *testing.T) {
		cert := &caCertifier{ca: ca, lifetime: time.Hour}
		cert.down.Store(true)
		p, err := controlplane.Start(cert, controlplane.Options{TokenFile: tokenFile(t, "good"), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for cert.calls.Load() < 3 {
			time.Sleep(time.Millisecond)
		}
		if _, err := p.Certificate(); !errors.Is(err, identity.ErrNoIdentity) {
			t.Fatalf("Certificate before certification: %v, want ErrNoIdentity", err)
		}
		select {
		case <-p.Ready():
			t.Fatal("ready without a certificate")
		default:
		}
		cert.down.Store(false)
		select {
		case <-p.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("not ready after the control plane came back")
		}
		if id, err := identity.LocalID(p); err != nil || id.String() != "spiffe://td.test/ns/ns/sa/web" {
			t.Fatalf("LocalID: %v %v", id, err)
		}
		if _, err := p.Bundle("td.test"); err != nil {
			t.Fatalf("Bundle: %v", err)
		}
	})

	t.Run("a rejected token never certifies", func(t *testing.T) {
		cert := &caCertifier{ca: ca, lifetime: time.Hour}
		p, err := controlplane.Start(cert, controlplane.Options{TokenFile: tokenFile(t, "bad"), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		for cert.calls.Load() < 3 {
			time.Sleep(time.Millisecond)
		}
		if _, err := p.Certificate(); err == nil {
			t.Fatal("certified with a rejected token")
		}
	})

	t.Run("renews, and keeps the certificate while renewal fails", func(t *testing.T) {
		cert := &caCertifier{ca: ca, lifetime: 4 * time.Second}
		p, err := controlplane.Start(cert, controlplane.Options{TokenFile: tokenFile(t, "good"), RenewAt: 0.5, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		<-p.Ready()
		first, _ := p.Certificate()
		changed := p.Changed()
		select {
		case <-changed:
		case <-time.After(20 * time.Second):
			t.Fatal("no renewal")
		}
		second, _ := p.Certificate()
		if !second.Leaf.NotAfter.After(first.Leaf.NotAfter) {
			t.Fatal("renewal did not extend the certificate")
		}
		if !second.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(first.Leaf.PublicKey) {
			t.Fatal("renewal changed the key")
		}
		cert.down.Store(true)
		calls := cert.calls.Load()
		for cert.calls.Load() < calls+3 {
			time.Sleep(time.Millisecond)
		}
		if now, err := p.Certificate(); err != nil || now != second {
			t.Fatalf("after failed renewals: %v, want the last certificate kept", err)
		}
	})
}
