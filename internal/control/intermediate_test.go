package control_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/controlplane"
	"github.com/quicmesh/quicmesh/internal/controlclient"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// TestIntermediateCA runs the control plane with an intermediate issued
// from a root kept elsewhere: Certify answers leaf + intermediate and a
// bundle of the root alone, the sidecars' providers accept that, two
// sidecars holding only the root verify each other, and a certified
// sidecar is admitted to Discovery (the server's client-certificate check
// anchors at the root too).
func TestIntermediateCA(t *testing.T) {
	testkit.CheckLeaks(t)
	root, err := identity.NewRootCA("td.test", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := identity.NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, inter)
	anchors := root.Pool() // what --control-ca gives a sidecar

	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("good"), 0o600); err != nil {
		t.Fatal(err)
	}
	startProvider := func() *controlplane.Provider {
		conn, err := controlclient.Dial(addr, anchors, controlID, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		p, err := controlplane.Start(controlpb.NewIdentityClient(conn), controlplane.Options{TokenFile: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	a, b := startProvider(), startProvider()
	for _, p := range []*controlplane.Provider{a, b} {
		select {
		case <-p.Ready():
		case <-time.After(time.Until(testkit.HangGuard(t))):
			t.Fatal("sidecar not certified")
		}
	}
	cert, err := a.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != 2 {
		t.Fatalf("certified chain has %d certificates, want leaf + intermediate", len(cert.Certificate))
	}
	if c, err := x509.ParseCertificate(cert.Certificate[1]); err != nil || !c.Equal(inter.Cert()) {
		t.Fatalf("chain's second certificate is not the intermediate (%v)", err)
	}
	bundle, err := a.Bundle("td.test")
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.Equal(anchors) {
		t.Fatal("the trust bundle the control plane sent is not the root alone")
	}

	// Sidecar to sidecar, each verifying against the root only.
	id := identity.MustParseID("spiffe://td.test/ns/ns/sa/sa")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerConfig(b, identity.AuthorizeID(id), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(testkit.HangGuard(t))
		_, err = c.Write([]byte("ok"))
		served <- err
	}()
	d := tls.Dialer{Config: identity.ClientConfig(a, id, nil), NetDialer: &net.Dialer{Deadline: testkit.HangGuard(t)}}
	c, err := d.DialContext(testkit.HangCtx(t), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("sidecar a to b, both holding only the root: %v", err)
	}
	c.SetDeadline(testkit.HangGuard(t))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("reading from b: %v", err)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Fatalf("b: %v", err)
	}
	if got, err := identity.PeerID(c.(*tls.Conn).ConnectionState()); err != nil || got != id {
		t.Fatalf("a saw peer %v (%v), want %s", got, err, id)
	}

	// Discovery admits the certified sidecar.
	certified, err := controlclient.Dial(addr, anchors, controlID, a.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	defer certified.Close()
	ctx := testkit.HangCtx(t)
	s, err := controlpb.NewDiscoveryClient(certified).Watch(ctx, &controlpb.WatchRequest{Service: "echo.ns"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("watch with an intermediate-issued certificate: %v", err)
	}
}
