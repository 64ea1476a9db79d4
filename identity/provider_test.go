package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestStaticProvider(t *testing.T) {
	ca := newTestCA(t, "example.org")
	cert := issue(t, ca, serverID)

	tests := []struct {
		name        string
		cert        *tls.Certificate
		rootsNil    bool
		certErr     bool
		rootsErr    bool
		wantID      ID
		wantLeafSet bool
	}{
		{name: "complete", cert: cert, wantID: serverID, wantLeafSet: true},
		{name: "leaf filled in", cert: &tls.Certificate{Certificate: cert.Certificate, PrivateKey: cert.PrivateKey}, wantID: serverID, wantLeafSet: true},
		// Without a certificate the local trust domain is unknown.
		{name: "nil cert", cert: nil, certErr: true, rootsErr: true},
		{name: "empty cert", cert: &tls.Certificate{}, certErr: true, rootsErr: true},
		{name: "cert without key", cert: &tls.Certificate{Certificate: cert.Certificate}, certErr: true},
		{name: "nil roots", cert: cert, rootsNil: true, rootsErr: true, wantID: serverID, wantLeafSet: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roots := ca.Pool()
			if tt.rootsNil {
				roots = nil
			}
			p := NewStaticProvider(tt.cert, roots)
			got, err := p.Certificate()
			if tt.certErr {
				if !errors.Is(err, ErrNoIdentity) {
					t.Fatalf("Certificate() = %v, %v; want ErrNoIdentity", got, err)
				}
				if !p.ID().IsZero() {
					t.Fatalf("ID() = %v without a certificate", p.ID())
				}
			} else if err != nil {
				t.Fatal(err)
			} else if (got.Leaf != nil) != tt.wantLeafSet {
				t.Fatalf("Leaf set = %v", got.Leaf != nil)
			}
			if !tt.certErr && p.ID() != tt.wantID {
				t.Fatalf("ID() = %v, want %v", p.ID(), tt.wantID)
			}
			if _, err := p.Bundle("example.org"); tt.rootsErr != errors.Is(err, ErrNoIdentity) {
				t.Fatalf("Bundle(local) error = %v, want ErrNoIdentity: %v", err, tt.rootsErr)
			}
		})
	}
	// The caller's certificate is not modified when Leaf is filled in.
	bare := &tls.Certificate{Certificate: cert.Certificate, PrivateKey: cert.PrivateKey}
	NewStaticProvider(bare, nil)
	if bare.Leaf != nil {
		t.Fatal("NewStaticProvider modified the caller's certificate")
	}
}

func TestStaticProviderSetAndWatch(t *testing.T) {
	ca := newTestCA(t, "example.org")
	p := NewStaticProvider(nil, nil)
	if _, err := p.Certificate(); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("empty provider: %v", err)
	}
	// Many watchers all wake on one Set.
	var wg sync.WaitGroup
	ch := p.Changed()
	woke := make(chan struct{}, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ch
			woke <- struct{}{}
		}()
	}
	p.Set(issue(t, ca, serverID), ca.Pool())
	wg.Wait()
	if len(woke) != 8 {
		t.Fatalf("%d of 8 watchers woke", len(woke))
	}
	if p.ID() != serverID {
		t.Fatalf("ID() = %v", p.ID())
	}
	// Back to no identity: fail closed again.
	ch = p.Changed()
	p.Set(nil, ca.Pool())
	if !isClosed(ch) {
		t.Fatal("Set(nil) did not signal a change")
	}
	if _, err := p.Certificate(); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("after Set(nil): %v", err)
	}
}

// TestStaticProviderConcurrent is for the race detector.
func TestStaticProviderConcurrent(t *testing.T) {
	ca := newTestCA(t, "example.org")
	certs := []*tls.Certificate{issue(t, ca, serverID), issue(t, ca, clientID)}
	p := NewStaticProvider(certs[0], ca.Pool())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := p.Certificate(); err != nil {
					t.Error(err)
					return
				}
				p.Bundle("example.org")
				p.Changed()
				p.ID()
			}
		}()
	}
	for i := range 200 {
		p.Set(certs[i%2], ca.Pool())
	}
	close(stop)
	wg.Wait()
}

func TestCAProvider(t *testing.T) {
	ca := newTestCA(t, "example.org")
	baseline := testkit.TakeBaseline()

	p, err := NewCAProvider(ca, serverID, CAProviderOptions{Lifetime: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if p.ID() != serverID {
		t.Fatalf("ID() = %v", p.ID())
	}
	if got, err := LocalID(p); err != nil || got != serverID {
		t.Fatalf("LocalID = %v, %v", got, err)
	}
	first, err := p.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(first.Leaf.NotAfter); d > 300*time.Millisecond+time.Second {
		t.Fatalf("certificate lives %v, want ~300ms", d)
	}

	// Renewal at about half the lifetime closes Changed with a new,
	// still-valid certificate, over and over.
	for i := range 3 {
		ch := p.Changed()
		start := time.Now()
		waitClosed(t, ch, "CAProvider renewal")
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("renewal %d took %v", i, d)
		}
		cert, err := p.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		if cert.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
			t.Fatal("Changed closed but the certificate is the same")
		}
		if time.Now().After(cert.Leaf.NotAfter) {
			t.Fatal("renewed certificate already expired")
		}
	}

	// A handshake with a CAProvider on both ends works.
	cp, err := NewCAProvider(ca, clientID, CAProviderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res := handshake(t, ServerConfig(p, nil, nil), ClientConfig(cp, serverID, nil)); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake: %v / %v", res.serverErr, res.clientErr)
	}
	ch := cp.Changed()
	if err := cp.Renew(); err != nil {
		t.Fatal(err)
	}
	if !isClosed(ch) {
		t.Fatal("Renew did not close Changed")
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	cp.Close()
	baseline.Check(t)

	// No renewal after Close.
	ch = p.Changed()
	time.Sleep(400 * time.Millisecond)
	if isClosed(ch) {
		t.Fatal("renewed after Close")
	}
}

func TestCAProviderErrors(t *testing.T) {
	ca := newTestCA(t, "example.org")
	tests := []struct {
		name string
		ca   *CA
		id   ID
		opts CAProviderOptions
	}{
		{"nil CA", nil, serverID, CAProviderOptions{}},
		{"other trust domain", ca, MustParseID("spiffe://other.org/x"), CAProviderOptions{}},
		{"negative lifetime", ca, serverID, CAProviderOptions{Lifetime: -1}},
	}
	baseline := testkit.TakeBaseline()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := NewCAProvider(tt.ca, tt.id, tt.opts); err == nil {
				p.Close()
				t.Fatal("NewCAProvider succeeded")
			}
		})
	}
	baseline.Check(t)
}

// TestCAProviderCappedByCA: when the CA's expiry caps the leaf, the provider
// does not spin re-issuing certificates that cannot live longer.
func TestCAProviderCappedByCA(t *testing.T) {
	ca, err := NewCA("example.org", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewCAProvider(ca, serverID, CAProviderOptions{Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cert, _ := p.Certificate()
	if !cert.Leaf.NotAfter.Equal(ca.Cert().NotAfter) {
		t.Fatalf("leaf NotAfter %v, want capped at %v", cert.Leaf.NotAfter, ca.Cert().NotAfter)
	}
	ch := p.Changed()
	time.Sleep(100 * time.Millisecond) // half of the remaining lifetime
	if isClosed(ch) {
		t.Fatal("re-issued although the CA caps the lifetime")
	}
}

func TestCAProviderFederated(t *testing.T) {
	ca := newTestCA(t, "example.org")
	other := newTestCA(t, "other.org")
	p, err := NewCAProvider(ca, serverID, CAProviderOptions{Federated: Bundles{"other.org": other.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tests := []struct {
		td      string
		want    *x509.CertPool
		wantErr error
	}{
		{"example.org", ca.Pool(), nil},
		{"other.org", other.Pool(), nil},
		{"third.org", nil, ErrNoBundle},
	}
	for _, tt := range tests {
		got, err := p.Bundle(tt.td)
		if !errors.Is(err, tt.wantErr) || (tt.want != nil && !got.Equal(tt.want)) {
			t.Errorf("Bundle(%q) = %v, %v; want the %s bundle, error %v", tt.td, got, err, tt.td, tt.wantErr)
		}
	}
	// Renewal keeps the federated bundles.
	if err := p.Renew(); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Bundle("other.org"); err != nil || !got.Equal(other.Pool()) {
		t.Fatalf("after Renew: Bundle(other.org) = %v, %v", got, err)
	}
}
