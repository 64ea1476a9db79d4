package control_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlclient"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// oneAccount accepts the token "good" as service account ns/sa. The
// review against a real API server is tested in internal/control/kube.
type oneAccount struct{}

func (oneAccount) Review(_ context.Context, token string) (control.ServiceAccount, error) {
	if token != "good" {
		return control.ServiceAccount{}, control.ErrTokenRejected
	}
	return control.ServiceAccount{Namespace: "ns", Name: "sa"}, nil
}

// oneService knows service "echo.ns" with one endpoint, unchanging.
type oneService struct{}

func (oneService) Subscribe(service string) control.Subscription {
	set := &control.EndpointSet{}
	if service == "echo.ns" {
		set = &control.EndpointSet{Exists: true, Endpoints: map[string]*controlpb.Endpoint{"x": {Address: "127.0.0.1:1", Identity: "spiffe://td.test/ns/ns/sa/echo", Weight: 1, Ready: true}}}
	}
	return fixedSub{set}
}

func (oneService) Catalog() (control.Catalog, <-chan struct{}) {
	return control.Catalog{}, make(chan struct{})
}

type fixedSub struct{ set *control.EndpointSet }

func (s fixedSub) Current() (*control.EndpointSet, <-chan struct{}) {
	return s.set, make(chan struct{})
}
func (fixedSub) Close() {}

var controlID = identity.MustParseID("spiffe://td.test/ns/quicmesh/sa/quicmesh-control")

func startServer(t *testing.T, ca *identity.CA) string {
	t.Helper()
	srv, err := control.NewServer(control.Config{CA: ca, ID: controlID, Reviewer: oneAccount{}, Source: oneService{}, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestServerAdmission: anyone the anchors vouch the server to may ask
// Certify (a workload has no certificate yet), only certified workloads
// may watch, and a client refuses a server that is not the control plane.
func TestServerAdmission(t *testing.T) {
	ca, err := identity.NewCA("td.test", 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, ca)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var cert *tls.Certificate
	conn, err := controlclient.Dial(addr, ca.Pool(), controlID, func() (*tls.Certificate, error) {
		if cert == nil {
			return nil, identity.ErrNoIdentity
		}
		return cert, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	watch := func(conn controlpb.DiscoveryClient) error {
		s, err := conn.Watch(ctx, &controlpb.WatchRequest{Service: "echo.ns"})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	if err := watch(controlpb.NewDiscoveryClient(conn)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("watch without a certificate: %v, want Unauthenticated", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := controlpb.NewIdentityClient(conn).Certify(ctx, &controlpb.CertifyRequest{Csr: csr, Token: "good"})
	if err != nil {
		t.Fatalf("Certify without a client certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(res.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := identity.IDFromCert(leaf); id.String() != "spiffe://td.test/ns/ns/sa/sa" {
		t.Fatalf("certified %v", id)
	}
	if got := res.Lifetime.AsDuration(); got < time.Hour {
		t.Fatalf("lifetime %v, want the configured hour", got)
	}

	// A new connection presents the certificate (the first one's
	// handshake is done).
	cert = &tls.Certificate{Certificate: res.Chain, PrivateKey: key, Leaf: leaf}
	certified, err := controlclient.Dial(addr, ca.Pool(), controlID, func() (*tls.Certificate, error) { return cert, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer certified.Close()
	if err := watch(controlpb.NewDiscoveryClient(certified)); err != nil {
		t.Fatalf("watch with the certificate: %v", err)
	}

	t.Run("a certificate of another CA does not admit", func(t *testing.T) {
		other, err := identity.NewCA("td.test", 0)
		if err != nil {
			t.Fatal(err)
		}
		forged, err := other.Issue(identity.MustParseID("spiffe://td.test/ns/ns/sa/sa"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := controlclient.Dial(addr, ca.Pool(), controlID, func() (*tls.Certificate, error) { return forged, nil })
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := watch(controlpb.NewDiscoveryClient(conn)); err == nil {
			t.Fatal("a certificate of another CA was admitted")
		}
	})

	t.Run("a server that is not the control plane is refused", func(t *testing.T) {
		conn, err := controlclient.Dial(addr, ca.Pool(), identity.MustParseID("spiffe://td.test/ns/quicmesh/sa/impostor"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = controlpb.NewIdentityClient(conn).Certify(ctx, &controlpb.CertifyRequest{Csr: csr, Token: "good"})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Certify with a server of the wrong ID: %v, want Unavailable (handshake refused)", err)
		}
	})

	t.Run("a server the anchors do not vouch for is refused", func(t *testing.T) {
		other, err := identity.NewCA("td.test", 0)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := controlclient.Dial(addr, other.Pool(), controlID, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = controlpb.NewIdentityClient(conn).Certify(ctx, &controlpb.CertifyRequest{Csr: csr, Token: "good"})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Certify with an unvouched server: %v, want Unavailable (handshake refused)", err)
		}
	})
}
