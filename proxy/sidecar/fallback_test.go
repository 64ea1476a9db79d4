package sidecar_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// One client sidecar in auto mode reaches a peer that serves only TCP
// (QUIC disabled: its UDP socket never answers) and a peer that serves
// only QUIC, side by side: each over the transport it has, the TCP-only
// one marked QUIC-blocked, neither affecting the other.
func TestTCPOnlyAndQUICOnlyPeersSideBySide(t *testing.T) {
	m := meshtest.New(t)
	tcpWeb := m.HTTPApp("tcpweb", meshtest.H1, nil)
	quicWeb := m.HTTPApp("quicweb", meshtest.H1, nil)
	const tcpPeerID, quicPeerID = "spiffe://test.local/ns/default/sa/tcponly", "spiffe://test.local/ns/default/sa/quiconly"
	tcpPeer := m.Start("tcponly", meshtest.Spec{ID: tcpPeerID, Transport: fallback.TCP, Routes: map[string]string{"tcpweb": tcpWeb.URL("http")}})
	quicPeer := m.Start("quiconly", meshtest.Spec{ID: quicPeerID, Transport: fallback.QUIC, Routes: map[string]string{"quicweb": quicWeb.URL("http")}})
	if quicPeer.InboundTCPAddr() != nil {
		t.Fatal("a QUIC-only sidecar listens over TCP")
	}
	client := m.Start("client", meshtest.Spec{
		ID:                clientID,
		Binds:             []meshtest.Bind{{Service: "tcpweb"}, {Service: "quicweb"}},
		ClientsSpeakFirst: true,
	})
	c := testkit.H1Client(t)
	for range 5 {
		for _, svc := range []string{"tcpweb", "quicweb"} {
			code, err := httpStatus(c, "http://"+client.Bind(svc)+"/")
			if err != nil || code != http.StatusOK {
				t.Fatalf("%s: %d %v", svc, code, err)
			}
		}
	}
	if tcpWeb.Hits.Load() != 5 || quicWeb.Hits.Load() != 5 {
		t.Fatalf("apps saw %d and %d requests, want 5 each", tcpWeb.Hits.Load(), quicWeb.Hits.Load())
	}
	if got := client.TCPPool().Len(); got != 1 {
		t.Fatalf("%d TCP connections, want 1 (to the TCP-only peer)", got)
	}
	if got := client.Pool().Len(); got != 1 {
		t.Fatalf("%d QUIC connections, want 1 (to the QUIC-only peer)", got)
	}
	if !client.QUICBlocked(tcpPeer.InboundAddr().String(), identity.MustParseID(tcpPeerID)) {
		t.Fatal("the TCP-only peer is not marked QUIC-blocked")
	}
	if client.QUICBlocked(quicPeer.InboundAddr().String(), identity.MustParseID(quicPeerID)) {
		t.Fatal("the QUIC-only peer is marked QUIC-blocked")
	}
}

// A peer that answers QUIC but with the wrong identity is not "blocked":
// the race does not fall back to TCP for an answer from the peer (the
// same certificate would be refused there), and nothing is served.
func TestIdentityFailureDoesNotFallBack(t *testing.T) {
	m := meshtest.New(t)
	web := m.HTTPApp("web", meshtest.H1, nil)
	server := m.Start("server", meshtest.Spec{ID: "spiffe://test.local/ns/default/sa/impostor", AdvertiseID: echoID, Routes: map[string]string{"web": web.URL("http")}})
	client := m.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{{Service: "web"}}, ClientsSpeakFirst: true})
	start := time.Now()
	code, err := httpStatus(testkit.H1Client(t), "http://"+client.Bind("web")+"/")
	if err != nil || code < 500 {
		t.Fatalf("request to an impostor: %d %v, want a 5xx", code, err)
	}
	t.Logf("refused after %v", time.Since(start).Round(time.Millisecond))
	if web.Hits.Load() != 0 || client.MeshConns() != 0 {
		t.Fatalf("app saw %d requests, %d mesh connections pooled", web.Hits.Load(), client.MeshConns())
	}
	if client.QUICBlocked(server.InboundAddr().String(), identity.MustParseID(echoID)) {
		t.Fatal("an identity failure marked the peer QUIC-blocked")
	}
}
