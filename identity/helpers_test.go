package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

func newTestCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := NewCA(td, time.Hour)
	if err != nil {
		t.Fatalf("NewCA(%q): %v", td, err)
	}
	return ca
}

func issue(t testing.TB, ca *CA, id ID) *tls.Certificate {
	t.Helper()
	cert, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatalf("Issue(%s): %v", id, err)
	}
	return cert
}

// mint signs an arbitrary leaf with ca's key, bypassing Issue's checks, so
// tests can build certificates Issue refuses to make. mutate edits a
// template that starts out like Issue's.
func mint(t testing.TB, ca *CA, mutate func(*x509.Certificate)) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := randomSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: ca.TrustDomain(), Path: "/minted"}},
	}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func pools(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.cert)
	}
	return p
}

// fakeProvider returns fixed values, including ones the real providers
// never return (a nil pool without an error).
type fakeProvider struct {
	cert  *tls.Certificate
	roots *x509.CertPool
}

// Bundle returns roots for every trust domain, so a fakeProvider holding a
// certificate without a SPIFFE ID can still verify its peer.
func (f fakeProvider) Certificate() (*tls.Certificate, error) { return f.cert, nil }
func (f fakeProvider) Bundle(string) (*x509.CertPool, error)  { return f.roots, nil }
func (f fakeProvider) Changed() <-chan struct{}               { return nil }

type handshakeResult struct {
	serverErr, clientErr     error
	serverState, clientState tls.ConnectionState
}

// handshake runs one TLS connection over loopback TCP. On success the
// server writes "ok" and the client reads it, so a refusal that the server
// decides after the client's handshake has completed (TLS 1.3 client
// certificates) still surfaces as clientErr.
func handshake(t *testing.T, scfg, ccfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(5 * time.Second)

	var res handshakeResult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		tc := tls.Server(c, scfg)
		if err := tc.Handshake(); err != nil {
			res.serverErr = err
			return
		}
		res.serverState = tc.ConnectionState()
		if _, err := tc.Write([]byte("ok")); err != nil {
			res.serverErr = err
			return
		}
		// Wait for the client to finish reading before closing.
		io.Copy(io.Discard, tc)
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(deadline)
	tc := tls.Client(c, ccfg)
	err = tc.Handshake()
	if err == nil {
		res.clientState = tc.ConnectionState()
		buf := make([]byte, 2)
		_, err = io.ReadFull(tc, buf)
	}
	res.clientErr = err
	tc.Close()
	wg.Wait()
	return res
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
