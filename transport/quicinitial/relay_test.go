package quicinitial

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// TestRelayAfterParse checks the contract a gateway relies on: the
// datagrams fed to an Assembler, forwarded unchanged and in order once it
// returns the Hello, let the client's QUIC handshake complete end to end
// with the server, and the server sees the server name and ALPN the
// Assembler read. (The relay here is the smallest that shows it, one
// client and one server; the gateway's is another branch's. That Feed
// leaves the datagrams as they came is TestFeed's to check: here a
// client's retransmissions would hide it.)
func TestRelayAfterParse(t *testing.T) {
	testkit.CheckLeaks(t)
	ctx := testkit.HangCtx(t)
	cert := selfSigned(t, "svc.example")

	seen := make(chan *tls.ClientHelloInfo, 1)
	serverTLS := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"quicmesh/1"},
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			seen <- chi
			return nil, nil
		},
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", serverTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		if err == nil {
			<-conn.HandshakeComplete()
			err = conn.CloseWithError(0, "")
		}
		accepted <- err
	}()

	gw := startTestRelay(t, ln.Addr().(*net.UDPAddr))

	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	clientTLS := &tls.Config{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}, RootCAs: roots}
	conn, err := quic.DialAddr(ctx, gw.addr(), clientTLS, nil)
	if err != nil {
		t.Fatalf("dial through the relay: %v", err)
	}
	if got := conn.ConnectionState().TLS.NegotiatedProtocol; got != "quicmesh/1" {
		t.Errorf("negotiated %q", got)
	}
	_ = conn.CloseWithError(0, "")
	if err := <-accepted; err != nil {
		t.Errorf("server: %v", err)
	}
	chi := <-seen
	h := gw.hello()
	if h.ServerName != chi.ServerName || h.ServerName != "svc.example" || len(h.ALPN) != len(chi.SupportedProtos) {
		t.Errorf("relay read %q %q, server saw %q %q", h.ServerName, h.ALPN, chi.ServerName, chi.SupportedProtos)
	}
	if gw.buffered() < 2 {
		t.Errorf("relay buffered %d datagrams before routing; Go's default ClientHello takes 2", gw.buffered())
	}
}

// testRelay forwards one client's flow to a server, but only once an
// Assembler has read the ClientHello from the datagrams it held back.
type testRelay struct {
	front, back *net.UDPConn
	wg          sync.WaitGroup

	mu     sync.Mutex
	client *net.UDPAddr
	h      Hello
	held   int
}

func startTestRelay(t *testing.T, server *net.UDPAddr) *testRelay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, server)
	if err != nil {
		front.Close()
		t.Fatal(err)
	}
	r := &testRelay{front: front, back: back}
	r.wg.Go(func() { r.clientToServer(t) })
	r.wg.Go(r.serverToClient)
	t.Cleanup(func() {
		front.Close()
		back.Close()
		r.wg.Wait()
	})
	return r
}

func (r *testRelay) addr() string { return r.front.LocalAddr().String() }

func (r *testRelay) hello() Hello {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.h
}

func (r *testRelay) buffered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}

func (r *testRelay) clientToServer(t *testing.T) {
	var a Assembler
	var held [][]byte
	routed := false
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.front.ReadFromUDP(buf)
		if err != nil {
			return
		}
		d := append([]byte(nil), buf[:n]...)
		if !routed {
			held = append(held, d)
			h, done, err := a.Feed(d)
			if err != nil {
				t.Errorf("relay: %v", err)
				return
			}
			if !done {
				continue
			}
			r.mu.Lock()
			r.client, r.h, r.held = from, h, len(held)
			r.mu.Unlock()
			routed = true
			for _, d := range held {
				if _, err := r.back.Write(d); err != nil {
					return
				}
			}
			continue
		}
		if _, err := r.back.Write(d); err != nil {
			return
		}
	}
}

func (r *testRelay) serverToClient() {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.back.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error for a datagram: not fatal for UDP
		}
		r.mu.Lock()
		client := r.client
		r.mu.Unlock()
		if client != nil {
			_, _ = r.front.WriteToUDP(buf[:n], client)
		}
	}
}

// selfSigned is a certificate for name, its own root.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
