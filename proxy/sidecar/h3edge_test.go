package sidecar_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport"
)

// seenApp answers with what the request that reached it carried: the
// identity the sidecar asserted, every other Quicmesh-* field, and the
// authority.
func seenApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var mesh []string
		for k := range r.Header {
			if httpx.IsMeshHeader(k) && k != httpx.HeaderPeerIdentity {
				mesh = append(mesh, k)
			}
		}
		slices.Sort(mesh)
		w.Header().Set("Seen-Identity", strings.Join(r.Header.Values(httpx.HeaderPeerIdentity), ","))
		w.Header().Set("Seen-Mesh-Fields", strings.Join(mesh, ","))
		w.Header().Set("Seen-Host", r.Host)
		io.WriteString(w, "ok")
	})
}

// h3Mesh is a sidecar serving "web" and "admin" to plain HTTP/3 clients:
// web to frontend only, admin to nobody but the admin identity.
type h3Mesh struct {
	*meshtest.Mesh
	server     *meshtest.Sidecar
	web, admin *meshtest.App
}

const adminID = "spiffe://test.local/ns/default/sa/admin"

func newH3Mesh(t *testing.T, h3 bool) *h3Mesh {
	t.Helper()
	m := &h3Mesh{Mesh: meshtest.New(t)}
	m.web = m.HTTPApp("web", meshtest.H1, seenApp())
	m.admin = m.HTTPApp("admin", meshtest.H1, seenApp())
	pol, err := authz.Parse(authz.Spec{Routes: map[string][]string{"web": {frontendID}, "admin": {adminID}}})
	if err != nil {
		t.Fatal(err)
	}
	m.server = m.Start("server", meshtest.Spec{
		ID:            echoID,
		Routes:        map[string]string{"web": m.web.URL("http"), "admin": m.admin.URL("http")},
		Authorization: pol,
		InboundH3:     h3,
	})
	return m
}

// get sends a plain HTTP/3 GET for authority to the server sidecar with
// the extra header fields hdr.
func (m *h3Mesh) get(t *testing.T, tlsConf *tls.Config, authority string, hdr http.Header) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "https://"+m.server.InboundAddr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = authority
	for k, vv := range hdr {
		req.Header[k] = vv
	}
	resp, err := meshtest.H3Client(t, tlsConf).Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// A plain HTTP/3 client (quic-go's http3, ALPN "h3") reaches an app
// through a sidecar with inbound.h3 on, under the mesh's rules: a mesh
// certificate is required and verified against the trust bundle, the
// route is the :authority, the policy applies (403), and the app sees
// the verified identity and nothing the client claimed in the mesh's
// header fields.
func TestPlainHTTP3Client(t *testing.T) {
	m := newH3Mesh(t, true)
	serverID := identity.MustParseID(echoID)
	otherRoot := identitytest.NewCA(t, "test.local") // same trust domain, another root
	// Fields only a sidecar may assert, forged by the client: they must
	// neither route the request (to admin) nor reach the app.
	forged := http.Header{
		httpx.HeaderPeerIdentity: {adminID},
		httpx.HeaderService:      {"admin"},
		httpx.HeaderDestPort:     {"9"},
		httpx.HeaderOrigProto:    {"h2"},
	}
	cases := []struct {
		name      string
		tls       *tls.Config
		authority string
		hdr       http.Header
		status    int    // 0: the handshake must fail
		identity  string // what the app must see
	}{
		{name: "mesh certificate", tls: meshtest.H3TLS(identitytest.Provider(t, m.CA, frontendID), serverID, ""),
			authority: "web", status: 200, identity: frontendID},
		{name: "authority with a port", tls: meshtest.H3TLS(identitytest.Provider(t, m.CA, frontendID), serverID, ""),
			authority: "web:443", status: 200, identity: frontendID},
		{name: "forged mesh fields are ignored and stripped", tls: meshtest.H3TLS(identitytest.Provider(t, m.CA, frontendID), serverID, ""),
			authority: "web", hdr: forged, status: 200, identity: frontendID},
		{name: "denied identity", tls: meshtest.H3TLS(identitytest.Provider(t, m.CA, intruderID), serverID, ""),
			authority: "web", status: http.StatusForbidden},
		{name: "route nobody serves", tls: meshtest.H3TLS(identitytest.Provider(t, m.CA, frontendID), serverID, ""),
			authority: "nothing", status: http.StatusServiceUnavailable},
		{name: "no certificate", tls: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{transport.ALPNH3}},
			authority: "web"},
		{name: "certificate of another trust root", tls: meshtest.H3TLS(identitytest.Provider(t, otherRoot, frontendID), serverID, ""),
			authority: "web"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hits := m.web.Hits.Load() + m.admin.Hits.Load()
			resp, err := m.get(t, tc.tls, tc.authority, tc.hdr)
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("got %d, want the handshake refused", resp.StatusCode)
				}
				if n := m.web.Hits.Load() + m.admin.Hits.Load() - hits; n != 0 {
					t.Fatalf("a refused client reached the apps %d times", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, resp.Header.Get(httpx.HeaderProxyError), tc.status)
			}
			if tc.status != 200 {
				if n := m.web.Hits.Load() + m.admin.Hits.Load() - hits; n != 0 {
					t.Fatalf("a %d reached the apps %d times", tc.status, n)
				}
				return
			}
			if m.admin.Hits.Load() != 0 {
				t.Fatal("a request for web reached admin")
			}
			if got := resp.Header.Get("Seen-Identity"); got != tc.identity {
				t.Errorf("app saw identity %q, want %q", got, tc.identity)
			}
			if got := resp.Header.Get("Seen-Mesh-Fields"); got != "" {
				t.Errorf("app saw the client's mesh fields %s", got)
			}
		})
	}
	// A sidecar's mesh connection to the same port still works: the
	// server prefers the mesh ALPN, which is all a sidecar offers.
	client := m.Start("frontend", meshtest.Spec{ID: frontendID, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "web"}}})
	resp, err := testkit.H1Client(t).Get("http://" + client.Bind("web") + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Seen-Identity") != frontendID {
		t.Fatalf("through a sidecar: status %d, identity %q", resp.StatusCode, resp.Header.Get("Seen-Identity"))
	}
}

// Without inbound.h3 (the default) the listener speaks the mesh ALPN
// only: a plain HTTP/3 client with a valid mesh certificate is refused
// in the handshake.
func TestPlainHTTP3OffByDefault(t *testing.T) {
	m := newH3Mesh(t, false)
	resp, err := m.get(t, meshtest.H3TLS(identitytest.Provider(t, m.CA, frontendID), identity.MustParseID(echoID), ""), "web", nil)
	if err == nil {
		t.Fatalf("got %d, want the handshake refused", resp.StatusCode)
	}
	if !strings.Contains(err.Error(), "no application protocol") {
		t.Errorf("error %v, want the ALPN refusal", err)
	}
	if m.web.Hits.Load() != 0 {
		t.Fatal("the app was reached")
	}
}
