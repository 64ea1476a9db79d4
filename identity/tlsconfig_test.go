package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

const testALPN = "quicmesh/test"

var (
	serverID = MustParseID("spiffe://example.org/server")
	clientID = MustParseID("spiffe://example.org/client")
)

func TestHandshake(t *testing.T) {
	caA := newTestCA(t, "example.org")
	caB := newTestCA(t, "example.org") // same trust domain, different key
	caOther := newTestCA(t, "other.org")
	now := time.Now()

	serverP := NewStaticProvider(issue(t, caA, serverID), caA.Pool())
	clientP := NewStaticProvider(issue(t, caA, clientID), caA.Pool())
	expired := func(ca *CA, id ID) *tls.Certificate {
		c, err := ca.IssueWithValidity(id, now.Add(-2*time.Hour), now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	plainErr := errors.New("policy says no")
	otherServerID := MustParseID("spiffe://other.org/server")
	otherClient := federated(issue(t, caOther, MustParseID("spiffe://other.org/client")), caOther, Bundles{"example.org": caA.Pool()})

	tests := []struct {
		name    string
		server  Provider
		authz   Authorizer
		client  Provider
		expect  ID
		ccfg    func(*tls.Config) // optional edits to the client config
		wantOK  bool
		side    string // which side decides the refusal: "server" or "client"
		reason  string
		wantErr error // optional extra errors.Is check on the deciding side
	}{
		{name: "ok, nil authz", server: serverP, client: clientP, expect: serverID, wantOK: true},
		{name: "ok, AuthorizeID", server: serverP, authz: AuthorizeID(clientID), client: clientP, expect: serverID, wantOK: true},
		{name: "ok, AuthorizeTrustDomain", server: serverP, authz: AuthorizeTrustDomain("example.org"), client: clientP, expect: serverID, wantOK: true},
		{name: "ok, federated peer allowed by authz",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": caOther.Pool()}), authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: otherClient, expect: serverID, wantOK: true},
		{name: "ok, server of a federated trust domain",
			server: federated(issue(t, caOther, otherServerID), caOther, Bundles{"example.org": caA.Pool()}), authz: AuthorizeTrustDomains("other.org", "example.org"),
			client: federated(issue(t, caA, clientID), caA, Bundles{"other.org": caOther.Pool()}), expect: otherServerID, wantOK: true},

		{name: "authz refuses ID", server: serverP, authz: AuthorizeID(MustParseID("spiffe://example.org/someone-else")),
			client: clientP, expect: serverID, side: "server", reason: ReasonWrongID},
		{name: "authz plain error", server: serverP, authz: func(ID) error { return plainErr },
			client: clientP, expect: serverID, side: "server", reason: ReasonWrongID, wantErr: plainErr},
		{name: "nil authz refuses a federated trust domain",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": caOther.Pool()}),
			client: otherClient, expect: serverID, side: "server", reason: ReasonWrongID},
		{name: "authz refuses a federated trust domain it does not list",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": caOther.Pool()}), authz: AuthorizeTrustDomains("example.org", "third.org"),
			client: otherClient, expect: serverID, side: "server", reason: ReasonWrongID},
		{name: "peer of a trust domain without a bundle is untrusted, whatever authz says",
			server: serverP, authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: otherClient, expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "local CA in a shared bundle does not vouch for another trust domain",
			server: NewStaticProvider(issue(t, caA, serverID), pools(caA, caOther)), authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: otherClient, expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "federated CA cannot mint local identities",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": caOther.Pool()}), authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: fakeProvider{cert: mint(t, caOther, func(c *x509.Certificate) { c.URIs = []*url.URL{clientID.URL()} }), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "local CA cannot mint identities of a federated trust domain",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": caOther.Pool()}), authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "other.org", Path: "/evil"}}
			}), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "federated bundle that wrongly holds the local CA cannot mint for its trust domain",
			server: federated(issue(t, caA, serverID), caA, Bundles{"other.org": pools(caOther, caA)}), authz: AuthorizeTrustDomains("example.org", "other.org"),
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "other.org", Path: "/evil"}}
			}), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "a federated entry for the local trust domain does not replace the local bundle",
			server: federated(issue(t, caA, serverID), caA, Bundles{"example.org": caB.Pool()}),
			client: NewStaticProvider(issue(t, caB, clientID), caA.Pool()), expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "server of a trust domain the client has no bundle for",
			server: federated(issue(t, caOther, otherServerID), caOther, Bundles{"example.org": caA.Pool()}),
			client: clientP, expect: otherServerID, side: "client", reason: ReasonUntrusted},
		{name: "client cert from another CA", server: serverP,
			client: NewStaticProvider(issue(t, caB, clientID), caA.Pool()), expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "expired client cert", server: serverP,
			client: NewStaticProvider(expired(caA, clientID), caA.Pool()), expect: serverID, side: "server", reason: ReasonExpired},
		{name: "not yet valid client cert", server: serverP,
			client: NewStaticProvider(mustIssueWithValidity(t, caA, clientID, now.Add(time.Hour), now.Add(2*time.Hour)), caA.Pool()),
			expect: serverID, side: "server", reason: ReasonExpired},
		{name: "expired client cert from another CA is untrusted", server: serverP,
			client: NewStaticProvider(expired(caB, clientID), caA.Pool()), expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "client cert without SPIFFE ID", server: serverP,
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) { c.URIs = nil }), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonBadID},
		{name: "client cert with two URI SANs", server: serverP,
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) {
				c.URIs = append(c.URIs, &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/two"})
			}), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonBadID},
		{name: "client cert with a non-canonical ID", server: serverP,
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/a/../b"}}
			}), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonBadID},
		{name: "client cert for server auth only", server: serverP,
			client: NewStaticProvider(mint(t, caA, func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			}), caA.Pool()),
			expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "client presents the CA certificate itself", server: serverP,
			client: NewStaticProvider(&tls.Certificate{Certificate: [][]byte{caA.cert.Raw}, PrivateKey: caA.key}, caA.Pool()),
			expect: serverID, side: "server", reason: ReasonBadID},
		{name: "CA mints an ID of another trust domain", server: NewStaticProvider(issue(t, caA, serverID), caA.Pool()),
			authz: AuthorizeTrustDomain("other.org"),
			client: fakeProvider{cert: mint(t, caA, func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "other.org", Path: "/evil"}}
			}), roots: caA.Pool()},
			expect: serverID, side: "server", reason: ReasonUntrusted},
		{name: "client sends no certificate", server: serverP, client: clientP, expect: serverID,
			ccfg: func(c *tls.Config) {
				c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
			},
			side: "server", reason: ReasonNoCertificate},
		{name: "server has no identity", server: NewStaticProvider(nil, caA.Pool()), client: clientP, expect: serverID,
			side: "server", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "server has no roots", server: NewStaticProvider(issue(t, caA, serverID), nil), client: clientP, expect: serverID,
			side: "server", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "server roots nil without error", server: fakeProvider{cert: issue(t, caA, serverID)}, client: clientP, expect: serverID,
			side: "server", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "nil server provider", server: nil, client: clientP, expect: serverID,
			side: "server", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},

		{name: "expired server cert", server: NewStaticProvider(expired(caA, serverID), caA.Pool()),
			client: clientP, expect: serverID, side: "client", reason: ReasonExpired},
		{name: "server cert from another CA", server: NewStaticProvider(issue(t, caB, serverID), caA.Pool()),
			client: clientP, expect: serverID, side: "client", reason: ReasonUntrusted},
		{name: "server cert for client auth only", server: NewStaticProvider(mint(t, caA, func(c *x509.Certificate) {
			c.URIs = []*url.URL{serverID.URL()}
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}), caA.Pool()), client: clientP, expect: serverID, side: "client", reason: ReasonUntrusted},
		{name: "wrong server ID", server: serverP, client: clientP, expect: MustParseID("spiffe://example.org/other"),
			side: "client", reason: ReasonWrongID},
		{name: "zero expected ID", server: serverP, client: clientP, expect: ID{}, side: "client", reason: ReasonWrongID},
		{name: "client has no identity", server: serverP, client: NewStaticProvider(nil, caA.Pool()), expect: serverID,
			side: "client", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "client has no roots", server: serverP, client: NewStaticProvider(issue(t, caA, clientID), nil), expect: serverID,
			side: "client", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "client roots nil without error", server: serverP, client: fakeProvider{cert: issue(t, caA, clientID)}, expect: serverID,
			side: "client", reason: ReasonNoIdentity, wantErr: ErrNoIdentity},
		{name: "TLS 1.2 client", server: serverP, client: clientP, expect: serverID,
			ccfg: func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12 },
			side: "server", reason: ReasonOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ccfg := ClientConfig(tt.client, tt.expect, []string{testALPN})
			if tt.ccfg != nil {
				tt.ccfg(ccfg)
			}
			res := handshake(t, ServerConfig(tt.server, tt.authz, []string{testALPN}), ccfg)
			if tt.wantOK {
				if res.serverErr != nil || res.clientErr != nil {
					t.Fatalf("handshake failed: server: %v; client: %v", res.serverErr, res.clientErr)
				}
				for side, cs := range map[string]tls.ConnectionState{"server": res.serverState, "client": res.clientState} {
					if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != testALPN {
						t.Errorf("%s: version %x, ALPN %q", side, cs.Version, cs.NegotiatedProtocol)
					}
				}
				wantClient, _ := LocalID(tt.client)
				if got, err := PeerID(res.serverState); err != nil || got != wantClient {
					t.Errorf("server's PeerID = %v, %v; want %v", got, err, wantClient)
				}
				if got, err := PeerID(res.clientState); err != nil || got != tt.expect {
					t.Errorf("client's PeerID = %v, %v; want %v", got, err, tt.expect)
				}
				return
			}
			if res.serverErr == nil && res.clientErr == nil {
				t.Fatal("handshake succeeded, want refusal")
			}
			// Whichever side decides fails; the other sees an alert.
			decided, other := res.serverErr, res.clientErr
			if tt.side == "client" {
				decided, other = res.clientErr, res.serverErr
			}
			if decided == nil {
				t.Fatalf("%s side did not fail (other side: %v)", tt.side, other)
			}
			if other == nil {
				t.Errorf("the other side succeeded although the %s refused: %v", tt.side, decided)
			}
			if got := ReasonOf(decided); got != tt.reason {
				t.Fatalf("ReasonOf(%v) = %q, want %q", decided, got, tt.reason)
			}
			if tt.reason != ReasonOther && tt.reason != ReasonNoCertificate {
				// Our refusals carry a *VerifyError through crypto/tls.
				if ve, ok := errors.AsType[*VerifyError](decided); !ok || ve.Reason != tt.reason {
					t.Errorf("errors.As(*VerifyError) failed on %v", decided)
				}
				if !errors.Is(decided, ErrUnauthorized) {
					t.Errorf("%v does not wrap ErrUnauthorized", decided)
				}
			}
			if tt.wantErr != nil && !errors.Is(decided, tt.wantErr) {
				t.Errorf("%v does not wrap %v", decided, tt.wantErr)
			}
		})
	}
}

func mustIssueWithValidity(t *testing.T, ca *CA, id ID, nb, na time.Time) *tls.Certificate {
	t.Helper()
	c, err := ca.IssueWithValidity(id, nb, na)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConfigFields(t *testing.T) {
	ca := newTestCA(t, "example.org")
	p := NewStaticProvider(issue(t, ca, serverID), ca.Pool())
	protos := []string{"a", "b"}
	s := ServerConfig(p, nil, protos)
	c := ClientConfig(p, MustParseID("spiffe://other.org/x"), protos)
	protos[0] = "mutated"
	for name, cfg := range map[string]*tls.Config{"server": s, "client": c} {
		if cfg.MinVersion != tls.VersionTLS13 {
			t.Errorf("%s MinVersion = %x", name, cfg.MinVersion)
		}
		if cfg.NextProtos[0] != "a" || len(cfg.NextProtos) != 2 {
			t.Errorf("%s NextProtos = %v, want a copy of [a b]", name, cfg.NextProtos)
		}
		if cfg.VerifyConnection == nil {
			t.Errorf("%s has no VerifyConnection", name)
		}
		if len(cfg.Certificates) != 0 {
			t.Errorf("%s has static Certificates", name)
		}
	}
	if s.ClientAuth != tls.RequestClientCert || s.GetCertificate == nil {
		t.Errorf("server: ClientAuth %v, GetCertificate set %v", s.ClientAuth, s.GetCertificate != nil)
	}
	if c.ServerName != "other.org" || !c.InsecureSkipVerify || c.GetClientCertificate == nil {
		t.Errorf("client: ServerName %q, InsecureSkipVerify %v", c.ServerName, c.InsecureSkipVerify)
	}
	if got := ClientConfig(p, ID{}, nil).ServerName; got == "" {
		t.Error("zero expect left ServerName empty")
	}
}

func TestPeerID(t *testing.T) {
	ca := newTestCA(t, "example.org")
	leaf := issue(t, ca, clientID).Leaf
	bad := mint(t, ca, func(c *x509.Certificate) { c.URIs = nil }).Leaf
	tests := []struct {
		name   string
		cs     tls.ConnectionState
		want   ID
		reason string // "" = success; "other" = plain error
	}{
		{"ok", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}, clientID, ""},
		{"incomplete", tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, ID{}, ReasonOther},
		{"no certificate", tls.ConnectionState{HandshakeComplete: true}, ID{}, ReasonNoCertificate},
		{"no SPIFFE ID", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{bad}}, ID{}, ReasonBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PeerID(tt.cs)
			if tt.reason == "" {
				if err != nil || got != tt.want {
					t.Fatalf("PeerID = %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			if err == nil || ReasonOf(err) != tt.reason {
				t.Fatalf("PeerID error = %v (reason %q), want reason %q", err, ReasonOf(err), tt.reason)
			}
		})
	}
}

// TestRotationStatic: Set on the server's provider takes effect on the next
// handshake, for both the certificate and the roots, and closes Changed.
func TestRotationStatic(t *testing.T) {
	caA := newTestCA(t, "example.org")
	caB := newTestCA(t, "example.org")
	newServerID := MustParseID("spiffe://example.org/server-v2")
	server := NewStaticProvider(issue(t, caA, serverID), caA.Pool())
	client := NewStaticProvider(issue(t, caA, clientID), pools(caA, caB))
	scfg := ServerConfig(server, nil, nil)

	if res := handshake(t, scfg, ClientConfig(client, serverID, nil)); res.clientErr != nil || res.serverErr != nil {
		t.Fatalf("initial handshake: %v / %v", res.serverErr, res.clientErr)
	}

	changed := server.Changed()
	server.Set(issue(t, caB, newServerID), caB.Pool())
	if !isClosed(changed) {
		t.Fatal("Set did not close the previous Changed channel")
	}
	if isClosed(server.Changed()) {
		t.Fatal("the new Changed channel is already closed")
	}
	if server.ID() != newServerID {
		t.Fatalf("ID() = %v after Set", server.ID())
	}

	// Same server config, no restart: the new certificate is served...
	res := handshake(t, scfg, ClientConfig(client, serverID, nil))
	if ReasonOf(res.clientErr) != ReasonWrongID {
		t.Fatalf("client expecting the old ID: %v, want wrong_id", res.clientErr)
	}
	// ...and the new roots no longer trust the client's CA-A certificate.
	res = handshake(t, scfg, ClientConfig(client, newServerID, nil))
	if ReasonOf(res.serverErr) != ReasonUntrusted {
		t.Fatalf("client from the retired CA: server error %v, want untrusted", res.serverErr)
	}
	client.Set(issue(t, caB, clientID), pools(caA, caB))
	res = handshake(t, scfg, ClientConfig(client, newServerID, nil))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("after rotating the client too: %v / %v", res.serverErr, res.clientErr)
	}
	if got, _ := PeerID(res.clientState); got != newServerID {
		t.Fatalf("client sees %v, want %v", got, newServerID)
	}
}

// TestResumptionIsReverified: a resumed TLS session skips certificate
// exchange, but VerifyConnection still checks the cached peer chain
// against the current roots.
func TestResumptionIsReverified(t *testing.T) {
	caA := newTestCA(t, "example.org")
	caB := newTestCA(t, "example.org")
	server := NewStaticProvider(issue(t, caA, serverID), caA.Pool())
	client := NewStaticProvider(issue(t, caA, clientID), caA.Pool())
	scfg := ServerConfig(server, nil, nil)
	ccfg := ClientConfig(client, serverID, nil)
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	if res := handshake(t, scfg, ccfg); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("first handshake: %v / %v", res.serverErr, res.clientErr)
	}
	res := handshake(t, scfg, ccfg)
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("resumed handshake: %v / %v", res.serverErr, res.clientErr)
	}
	if !res.serverState.DidResume {
		t.Fatal("second handshake did not resume; test is not exercising resumption")
	}
	if got, err := PeerID(res.serverState); err != nil || got != clientID {
		t.Fatalf("PeerID on resumed session = %v, %v", got, err)
	}
	// The server stops trusting CA-A (keeping its own certificate).
	server.Set(issue(t, caA, serverID), caB.Pool())
	res = handshake(t, scfg, ccfg)
	if ReasonOf(res.serverErr) != ReasonUntrusted {
		t.Fatalf("resumption after roots rotation: server error %v (resumed %v), want untrusted", res.serverErr, res.serverState.DidResume)
	}
}

func TestVerifyPeerDirect(t *testing.T) {
	ca := newTestCA(t, "example.org")
	p := NewStaticProvider(issue(t, ca, serverID), ca.Pool())
	leaf := issue(t, ca, clientID).Leaf
	tests := []struct {
		name   string
		p      Provider
		certs  []*x509.Certificate
		authz  Authorizer
		reason string
	}{
		{"ok", p, []*x509.Certificate{leaf}, AuthorizeID(clientID), ""},
		{"no certs", p, nil, AuthorizeID(clientID), ReasonNoCertificate},
		{"nil provider", nil, []*x509.Certificate{leaf}, AuthorizeID(clientID), ReasonNoIdentity},
		{"nil authz refuses", p, []*x509.Certificate{leaf}, nil, ReasonWrongID},
		{"authz returns wrapped VerifyError", p, []*x509.Certificate{leaf}, func(ID) error {
			return errors.Join(errors.New("ctx"), &VerifyError{Reason: ReasonBadID})
		}, ReasonBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := verifyPeer(tt.p, tt.certs, x509.ExtKeyUsageClientAuth, tt.authz)
			if tt.reason == "" {
				if err != nil || id != clientID {
					t.Fatalf("verifyPeer = %v, %v", id, err)
				}
				return
			}
			if got := ReasonOf(err); got != tt.reason || !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("verifyPeer error %v: reason %q, want %q wrapping ErrUnauthorized", err, got, tt.reason)
			}
		})
	}
}

func TestServerErrorMessageNamesReason(t *testing.T) {
	ca := newTestCA(t, "example.org")
	other := newTestCA(t, "example.org")
	server := NewStaticProvider(issue(t, ca, serverID), ca.Pool())
	client := NewStaticProvider(issue(t, other, clientID), ca.Pool())
	res := handshake(t, ServerConfig(server, nil, nil), ClientConfig(client, serverID, nil))
	if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "peer refused (untrusted)") {
		t.Fatalf("server error = %v", res.serverErr)
	}
}

func TestPresentedID(t *testing.T) {
	ca := newTestCA(t, "example.org")
	leaf := func(c *tls.Certificate) []*x509.Certificate {
		cert, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return []*x509.Certificate{cert}
	}
	tests := []struct {
		name  string
		certs []*x509.Certificate
		want  string
	}{
		{"no certificate", nil, ""},
		{"workload certificate", leaf(issue(t, ca, clientID)), clientID.String()},
		{"two URI SANs", leaf(mint(t, ca, func(c *x509.Certificate) {
			c.URIs = []*url.URL{clientID.URL(), serverID.URL()}
		})), ""},
		{"not a SPIFFE URI", leaf(mint(t, ca, func(c *x509.Certificate) {
			c.URIs = []*url.URL{{Scheme: "https", Host: "example.org"}}
		})), ""},
		// Unverified: a stranger's claim is reported as claimed.
		{"untrusted issuer", leaf(issue(t, newTestCA(t, "evil.org"), MustParseID("spiffe://evil.org/admin"))), "spiffe://evil.org/admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PresentedID(tt.certs); got != tt.want {
				t.Fatalf("PresentedID = %q, want %q", got, tt.want)
			}
		})
	}
}

// federated is a StaticProvider with cert, ca's root as the local bundle
// and the federated bundles fed.
func federated(cert *tls.Certificate, ca *CA, fed Bundles) *StaticProvider {
	p := NewStaticProvider(cert, ca.Pool())
	p.SetFederated(fed)
	return p
}
