package spiffe

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// fakeAgent serves the Workload API's FetchX509SVID on a unix socket and
// streams whatever the test sends on its channel: a response, or an error
// that ends the stream (the client then reconnects).
type fakeAgent struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	send chan any // *workload.X509SVIDResponse or error
}

func (a *fakeAgent) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case m := <-a.send:
			if err, ok := m.(error); ok {
				return err
			}
			if err := stream.Send(m.(*workload.X509SVIDResponse)); err != nil {
				return err
			}
		}
	}
}

func startFakeAgent(t *testing.T) (addr string, agent *fakeAgent, stop func()) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	agent = &fakeAgent{send: make(chan any)}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, agent)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return "unix://" + sock, agent, srv.Stop
}

// response is what an agent sends for a workload with cert from ca and
// the given federated CAs.
func response(t *testing.T, ca *identity.CA, cert *tls.Certificate, federated ...*identity.CA) *workload.X509SVIDResponse {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.IDFromCert(cert.Leaf)
	if err != nil {
		t.Fatal(err)
	}
	r := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId: id.String(), X509Svid: cert.Certificate[0], X509SvidKey: key, Bundle: ca.Cert().Raw,
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, f := range federated {
		r.FederatedBundles["spiffe://"+f.TrustDomain()] = f.Cert().Raw
	}
	return r
}

func issue(t *testing.T, ca *identity.CA, id string) *tls.Certificate {
	t.Helper()
	cert, err := ca.Issue(identity.MustParseID(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// The provider fails closed until the first SVID, follows every update the
// agent pushes (rotation, federated bundles coming and going) and keeps
// the last SVID through stream errors.
func TestProviderFollowsTheAgent(t *testing.T) {
	baseline := testkit.TakeBaseline()
	ca, err := identity.NewCA("example.org", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewCA("other.org", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	addr, agent, stopAgent := startFakeAgent(t)
	p, err := New(addr, Options{MaxRetryWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	// An agent that does not know the workload refuses it; the provider
	// retries and stays without identity.
	agent.send <- status.Error(codes.PermissionDenied, "no identity issued")
	if _, err := p.Certificate(); !errors.Is(err, identity.ErrNoIdentity) {
		t.Fatalf("Certificate before the first SVID: %v, want ErrNoIdentity", err)
	}
	if _, err := p.Bundle("example.org"); !errors.Is(err, identity.ErrNoIdentity) {
		t.Fatalf("Bundle before the first SVID: %v, want ErrNoIdentity", err)
	}
	select {
	case <-p.Ready():
		t.Fatal("ready without an SVID")
	default:
	}

	first := issue(t, ca, "spiffe://example.org/web")
	changed := p.Changed()
	agent.send <- response(t, ca, first) // delivered once the client has reconnected
	wait(t, p.Ready(), "Ready")
	wait(t, changed, "Changed at the first SVID")

	second := issue(t, ca, "spiffe://example.org/web")
	steps := []struct {
		name      string
		send      any
		wantCert  *tls.Certificate
		wantOther bool // a bundle for other.org
	}{
		{"first SVID, no federation", nil, first, false},
		{"rotation with a federated bundle", response(t, ca, second, other), second, true},
		{"stream error keeps the last SVID", status.Error(codes.Unavailable, "agent restarting"), second, true},
		{"federation withdrawn", response(t, ca, second), second, false},
	}
	for _, st := range steps {
		if st.send != nil {
			changed := p.Changed()
			agent.send <- st.send
			if _, isErr := st.send.(error); !isErr {
				wait(t, changed, "Changed after "+st.name)
			}
		}
		cert, err := p.Certificate()
		if err != nil || cert.Leaf.SerialNumber.Cmp(st.wantCert.Leaf.SerialNumber) != 0 {
			t.Fatalf("%s: Certificate = serial %v, %v; want serial %v", st.name, cert.Leaf.SerialNumber, err, st.wantCert.Leaf.SerialNumber)
		}
		if local, err := p.Bundle("example.org"); err != nil || !local.Equal(ca.Pool()) {
			t.Fatalf("%s: local bundle %v, %v", st.name, local, err)
		}
		fed, err := p.Bundle("other.org")
		if st.wantOther && (err != nil || !fed.Equal(other.Pool())) {
			t.Fatalf("%s: Bundle(other.org) = %v, %v; want other.org's CA", st.name, fed, err)
		}
		if !st.wantOther && !errors.Is(err, identity.ErrNoBundle) {
			t.Fatalf("%s: Bundle(other.org) error = %v, want ErrNoBundle", st.name, err)
		}
		if id, err := identity.LocalID(p); err != nil || id.String() != "spiffe://example.org/web" {
			t.Fatalf("%s: LocalID = %v, %v", st.name, id, err)
		}
	}

	// Updates the provider cannot use are refused: the last good SVID
	// stays and watchers are not woken.
	badSVID := response(t, ca, issue(t, ca, "spiffe://example.org/web"))
	badSVID.Svids[0].SpiffeId = "spiffe://third.org/web" // files the bundle under third.org
	badCtx, err := parseForTest(badSVID)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]*workloadapi.X509Context{
		"no bundle for the SVID's trust domain": badCtx,
		"no SVID":                               {Bundles: badCtx.Bundles},
	} {
		changed := p.Changed()
		p.update(bad)
		if cert, err := p.Certificate(); err != nil || cert.Leaf.SerialNumber.Cmp(second.Leaf.SerialNumber) != 0 {
			t.Fatalf("%s: serial %v, %v; want the last good one", name, cert.Leaf.SerialNumber, err)
		}
		select {
		case <-changed:
			t.Fatalf("%s: Changed fired", name)
		default:
		}
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := p.Certificate(); err != nil {
		t.Fatalf("after Close the last SVID is still served: %v", err)
	}
	stopAgent()
	baseline.Check(t)
}

// parseForTest turns a response into what the client hands the watcher,
// the way go-spiffe does: the SVID's bundle filed under its SPIFFE ID's
// trust domain.
func parseForTest(r *workload.X509SVIDResponse) (*workloadapi.X509Context, error) {
	svid, err := x509svid.ParseRaw(r.Svids[0].X509Svid, r.Svids[0].X509SvidKey)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(r.Svids[0].SpiffeId)
	if err != nil {
		return nil, err
	}
	certs, err := x509.ParseCertificates(r.Svids[0].Bundle)
	if err != nil {
		return nil, err
	}
	return &workloadapi.X509Context{SVIDs: []*x509svid.SVID{svid}, Bundles: x509bundle.NewSet(x509bundle.FromX509Authorities(td, certs))}, nil
}

func TestCheckAddress(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"unix:///run/spire/agent.sock", true},
		{"tcp://127.0.0.1:8081", true},
		{"/run/spire/agent.sock", false},
		{"tcp://localhost:8081", false},
		{"", false},
	}
	for _, tt := range tests {
		if err := CheckAddress(tt.addr); (err == nil) != tt.ok {
			t.Errorf("CheckAddress(%q) = %v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
	if _, err := New("/no/scheme", Options{}); err == nil {
		t.Fatal("New accepted an address without a scheme")
	}
}
