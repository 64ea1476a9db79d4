package sidecar_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// Certificates that live two seconds and rotate at half-life: traffic keeps
// flowing with no failure, and the pooled QUIC connection is replaced once
// the certificate it was authenticated with expires, so no connection
// outlives its credentials.
func TestShortLivedCertificatesRotateWithoutFailures(t *testing.T) {
	m := meshtest.New(t)
	provider := func(id string) identity.Provider {
		p, err := identity.NewCAProvider(m.CA, identity.MustParseID(id), identity.CAProviderOptions{Lifetime: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	web := m.HTTPApp("web", meshtest.H1, nil)
	server := m.Start("server", meshtest.Spec{ID: echoID, Identity: provider(echoID), Routes: map[string]string{"web": web.URL("http")}})
	addr := server.InboundAddr().String()
	client := m.Start("client", meshtest.Spec{ID: clientID, Identity: provider(clientID), Binds: []meshtest.Bind{{Service: "web"}}, ClientsSpeakFirst: true})

	c := testkit.H1Client(t)
	url := "http://" + client.Bind("web") + "/"
	first, err := client.Pool().Get(context.Background(), addr, identity.MustParseID(echoID))
	if err != nil {
		t.Fatal(err)
	}
	// Traffic runs until the first connection has been retired at its
	// certificate's expiry and closed, and then some more on its
	// successor: events, not a fixed 4 s that load could cut short.
	var ok, failed atomic.Int64
	deadline := testkit.HangGuard(t)
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
