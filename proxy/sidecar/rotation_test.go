package sidecar_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
)

// Certificates that live two seconds and rotate at half-life: traffic keeps
// flowing with no failure, and the pooled QUIC connection is replaced once
// the certificate it was authenticated with expires, so no connection
// outlives its credentials.
func TestShortLivedCertificatesRotateWithoutFailures(t *testing.T) {
	checkLeaks(t)
	ca := identitytest.NewCA(t, "test.local")
	provider := func(id string) identity.Provider {
		p, err := identity.NewCAProvider(ca, identity.MustParseID(id), identity.CAProviderOptions{Lifetime: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	web := echo.StartHTTP1(listen(t))
	t.Cleanup(func() { web.Close() })
	server, err := sidecar.Start(sidecar.Config{
		Identity: provider(echoID), Resolver: staticMap(t, nil), InboundAddr: "127.0.0.1:0",
		Routes: inbound.Routes{"web": "http://" + web.Addr().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	addr := server.InboundAddr().String()
	client, err := sidecar.Start(sidecar.Config{
		Identity: provider(clientID), InboundAddr: "127.0.0.1:0",
		Resolver: staticMap(t, map[string][]discovery.Endpoint{"web": {{Addr: addr, Identity: echoID}}}),
		Binds:    []sidecar.Bind{{Listen: "127.0.0.1:0", Service: "web"}},
		Outbound: outbound.Config{Detect: clientsSpeakFirst(t)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	c := h1Client(t)
	url := "http://" + client.BindAddr(0).String() + "/"
	first, err := client.Pool().Get(context.Background(), addr, identity.MustParseID(echoID))
	if err != nil {
		t.Fatal(err)
	}
	// Traffic runs until the first connection has been retired at its
	// certificate's expiry and closed, and then some more on its
	// successor: events, not a fixed 4 s that load could cut short.
	var ok, failed atomic.Int64
	deadline := hangGuard(t)
	after := 0
	for after < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("the first QUIC connection is still open %v after its peer certificate expired", time.Since(first.Conn.ConnectionState().TLS.PeerCertificates[0].NotAfter))
		}
		if !first.Alive() {
			after++
		}
		resp, err := c.Get(url)
		if err != nil {
			failed.Add(1)
			t.Logf("request failed: %v", err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			failed.Add(1)
			t.Logf("status %d: %s", resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error"))
			continue
		}
		ok.Add(1)
		time.Sleep(5 * time.Millisecond)
	}
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed across certificate rotation", failed.Load(), ok.Load()+failed.Load())
	}
	now, err := client.Pool().Get(context.Background(), addr, identity.MustParseID(echoID))
	if err != nil {
		t.Fatal(err)
	}
	if now == first {
		t.Fatal("the QUIC connection outlived the certificate it was authenticated with")
	}
	if first.Alive() {
		t.Fatal("the retired connection is still open")
	}
}
