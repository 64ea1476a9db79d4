package identity

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseDNSName(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		in, want string
		wantErr  string
	}{
		{in: "web", want: "web"},
		{in: "web.example.org", want: "web.example.org"},
		{in: "Web.Example.ORG", want: "web.example.org"},
		{in: "a-b.c0.example", want: "a-b.c0.example"},
		{in: "10-0-0-1.pods.example", want: "10-0-0-1.pods.example"},
		{in: long63 + ".example", want: long63 + ".example"},
		{in: strings.Repeat(long63+".", 3) + strings.Repeat("a", 61), want: strings.Repeat(long63+".", 3) + strings.Repeat("a", 61)},
		{in: "", wantErr: "empty DNS name"},
		{in: "*.example.org", wantErr: "wildcards are not issued"},
		{in: "*", wantErr: "wildcards are not issued"},
		{in: "web.*.org", wantErr: `has '*'`},
		{in: "web.example.org.", wantErr: "no trailing dot"},
		{in: "web..org", wantErr: "empty label"},
		{in: ".web", wantErr: "empty label"},
		{in: "-web.org", wantErr: "starts or ends with a hyphen"},
		{in: "web-.org", wantErr: "starts or ends with a hyphen"},
		{in: "we_b.org", wantErr: `has '_'`},
		{in: "web.org:443", wantErr: `has ':'`},
		{in: "wéb.org", wantErr: "want letters, digits and hyphens"},
		{in: "spiffe://example.org/web", wantErr: `has ':'`},
		{in: long63 + "a.example", wantErr: "more than 63"},
		{in: strings.Repeat(long63+".", 4), wantErr: "more than 253"},
		{in: "10.0.0.1", wantErr: "all digits"},
		{in: "web.123", wantErr: "all digits"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDNSName(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDNSName(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDNSName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// FuzzParseDNSName: a name ParseDNSName accepts is lower case, parses to
// itself, and is one x509 accepts as a DNS SAN and matches as a host
// name.
func FuzzParseDNSName(f *testing.F) {
	for _, s := range []string{"web.example.org", "*.example.org", "A-1.b", "10.0.0.1", "a..b", "x.", strings.Repeat("a.", 130)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseDNSName(s)
		if err != nil {
			return
		}
		if got != strings.ToLower(s) || len(got) > 253 {
			t.Fatalf("ParseDNSName(%q) = %q", s, got)
		}
		if again, err := ParseDNSName(got); err != nil || again != got {
			t.Fatalf("ParseDNSName(%q) = %q, %v; not stable", got, again, err)
		}
		leaf := &x509.Certificate{DNSNames: []string{got}}
		if err := leaf.VerifyHostname(got); err != nil {
			t.Fatalf("x509 does not match %q against itself: %v", got, err)
		}
	})
}

// A workload certificate with DNS names: a standard TLS client that
// verifies the host name against the CA accepts it for those names only,
// from a root and from an intermediate CA (whose URI name constraint
// leaves DNS names unconstrained), while the mesh's checks go by the URI
// SAN: the SPIFFE ID expected is accepted, another is refused whatever
// the DNS names.
func TestIssueWithDNSNames(t *testing.T) {
	root, err := NewRootCA("example.org", time.Hour, 1)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := NewIntermediateCA(root, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id := MustParseID("spiffe://example.org/ns/default/sa/web")
	names := []string{"web.example.org", "Web.Internal"}
	for _, tc := range []struct {
		name string
		ca   *CA
	}{{"root", root}, {"intermediate", inter}} {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := tc.ca.IssueWith(id, time.Hour, LeafOptions{DNSNames: names})
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{"web.example.org", "web.internal"}; !slices.Equal(cert.Leaf.DNSNames, want) {
				t.Fatalf("DNS SANs %v, want %v", cert.Leaf.DNSNames, want)
			}
			if got, err := IDFromCert(cert.Leaf); err != nil || got != id {
				t.Fatalf("IDFromCert = %v, %v; want %v", got, err, id)
			}
			edge := &tls.Config{Certificates: []tls.Certificate{*cert}}
			for _, host := range []string{"web.example.org", "WEB.internal"} {
				if res := handshake(t, edge, &tls.Config{RootCAs: root.Pool(), ServerName: host}); res.clientErr != nil || res.serverErr != nil {
					t.Errorf("standard client verifying %q: client %v, server %v", host, res.clientErr, res.serverErr)
				}
			}
			res := handshake(t, edge, &tls.Config{RootCAs: root.Pool(), ServerName: "other.example.org"})
			if _, ok := res.clientErr.(*tls.CertificateVerificationError); !ok {
				t.Errorf("standard client verifying a name the certificate lacks: %v; want a certificate verification error", res.clientErr)
			}

			prov := NewStaticProvider(cert, root.Pool())
			client := NewStaticProvider(issue(t, tc.ca, MustParseID("spiffe://example.org/ns/default/sa/client")), root.Pool())
			mesh := ServerConfig(prov, AuthorizeLocalTrustDomain(prov), []string{"test"})
			if res := handshake(t, mesh, ClientConfig(client, id, []string{"test"})); res.clientErr != nil || res.serverErr != nil {
				t.Fatalf("mesh client expecting %s: client %v, server %v", id, res.clientErr, res.serverErr)
			}
			other := MustParseID("spiffe://example.org/ns/default/sa/api")
			if res := handshake(t, mesh, ClientConfig(client, other, []string{"test"})); ReasonOf(res.clientErr) != ReasonWrongID {
				t.Fatalf("mesh client expecting %s of a certificate for %s with DNS names: %v (reason %q); want reason %q",
					other, id, res.clientErr, ReasonOf(res.clientErr), ReasonWrongID)
			}
		})
	}
}

func TestIssueWithBadDNSNames(t *testing.T) {
	ca := newTestCA(t, "example.org")
	id := MustParseID("spiffe://example.org/ns/default/sa/web")
	for _, tt := range []struct {
		names   []string
		wantErr string
	}{
		{[]string{"*.example.org"}, "wildcards are not issued"},
		{[]string{"web.example.org", "WEB.example.org"}, `"web.example.org" given twice`},
		{[]string{"10.0.0.1"}, "all digits"},
	} {
		if _, err := ca.IssueWith(id, time.Hour, LeafOptions{DNSNames: tt.names}); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("IssueWith(DNS names %q) error %v, want %q", tt.names, err, tt.wantErr)
		}
	}
}
