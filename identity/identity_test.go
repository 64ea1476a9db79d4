package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr string // substring; "" means valid
	}{
		{in: "spiffe://example.org", want: ID{TrustDomain: "example.org"}},
		{in: "spiffe://example.org/ns/default/sa/web", want: ID{TrustDomain: "example.org", Path: "/ns/default/sa/web"}},
		{in: "spiffe://td/a", want: ID{TrustDomain: "td", Path: "/a"}},
		{in: "spiffe://my-td_1.example/Svc.v2-x_y", want: ID{TrustDomain: "my-td_1.example", Path: "/Svc.v2-x_y"}},
		{in: "spiffe://1.2.3.4/x", want: ID{TrustDomain: "1.2.3.4", Path: "/x"}},
		{in: "spiffe://td/..a/a..", want: ID{TrustDomain: "td", Path: "/..a/a.."}},

		{in: "", wantErr: "scheme must be spiffe://"},
		{in: "example.org/x", wantErr: "scheme must be spiffe://"},
		{in: "https://example.org/x", wantErr: "scheme must be spiffe://"},
		{in: "SPIFFE://example.org/x", wantErr: "scheme must be spiffe://"},
		{in: "spiffe:/example.org/x", wantErr: "scheme must be spiffe://"},
		{in: "spiffe:example.org", wantErr: "scheme must be spiffe://"},
		{in: " spiffe://example.org/x", wantErr: "scheme must be spiffe://"},
		{in: "spiffe://", wantErr: "empty trust domain"},
		{in: "spiffe:///x", wantErr: "empty trust domain"},
		{in: "spiffe://Example.org/x", wantErr: "trust domain may contain only"},
		{in: "spiffe://example.org:443/x", wantErr: "trust domain may contain only"},
		{in: "spiffe://user@example.org/x", wantErr: "trust domain may contain only"},
		{in: "spiffe://exa mple.org", wantErr: "trust domain may contain only"},
		{in: "spiffe://example.org?x=1", wantErr: "trust domain may contain only"},
		{in: "spiffe://example.org#frag", wantErr: "trust domain may contain only"},
		{in: "spiffe://exämple.org", wantErr: "trust domain may contain only"},
		{in: "spiffe://example.org/", wantErr: "must not end with '/'"},
		{in: "spiffe://example.org/a/", wantErr: "empty, '.' or '..' segment"},
		{in: "spiffe://example.org//a", wantErr: "empty, '.' or '..' segment"},
		{in: "spiffe://example.org/a//b", wantErr: "empty, '.' or '..' segment"},
		{in: "spiffe://example.org/./a", wantErr: "empty, '.' or '..' segment"},
		{in: "spiffe://example.org/a/..", wantErr: "empty, '.' or '..' segment"},
		{in: "spiffe://example.org/a?b", wantErr: "path may contain only"},
		{in: "spiffe://example.org/a#b", wantErr: "path may contain only"},
		{in: "spiffe://example.org/a%2Fb", wantErr: "path may contain only"},
		{in: "spiffe://example.org/a b", wantErr: "path may contain only"},
		{in: "spiffe://example.org/ä", wantErr: "path may contain only"},
		{in: "spiffe://example.org/a:b", wantErr: "path may contain only"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseID(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseID(%q) = %+v, want error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseID(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseID(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseID(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
			if u := got.URL().String(); u != tt.in {
				t.Errorf("URL().String() = %q, want %q", u, tt.in)
			}
		})
	}
}

func TestIDZeroAndMust(t *testing.T) {
	var zero ID
	if !zero.IsZero() || zero.String() != "" {
		t.Fatalf("zero ID: IsZero=%v String=%q", zero.IsZero(), zero.String())
	}
	id := MustParseID("spiffe://example.org/a")
	if id.IsZero() {
		t.Fatal("parsed ID reports IsZero")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("MustParseID of an invalid ID did not panic")
		}
	}()
	MustParseID("http://x")
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org",
		"spiffe://example.org/ns/default/sa/web",
		"spiffe://td/a.b-c_d/E",
		"spiffe://example.org/",
		"spiffe://example.org//a",
		"spiffe://example.org/../a",
		"spiffe://Example.org/a",
		"spiffe://example.org:80/a",
		"spiffe://u@example.org/a",
		"spiffe://example.org/a%20b",
		"spiffe://example.org/a?b#c",
		"spiffe:///a",
		"https://example.org/a",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("ParseID(%q) returned %+v with error %v", s, id, err)
			}
			return
		}
		// Only canonical forms are accepted, so they round-trip exactly.
		if id.IsZero() {
			t.Fatalf("ParseID(%q) accepted a zero ID", s)
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		if id.Path != "" && !strings.HasPrefix(id.Path, "/") {
			t.Fatalf("ParseID(%q).Path = %q lacks a leading /", s, id.Path)
		}
		// A URI SAN built from the ID parses back to the same ID, as
		// IDFromCert sees it.
		u, err := url.Parse(id.URL().String())
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", id.URL(), err)
		}
		again, err := ParseID(u.String())
		if err != nil || again != id {
			t.Fatalf("round trip through url: %+v, %v; want %+v", again, err, id)
		}
	})
}

func TestIDFromCert(t *testing.T) {
	u := func(s string) *url.URL {
		t.Helper()
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name    string
		cert    *x509.Certificate
		want    ID
		wantErr bool
	}{
		{"one spiffe URI", &x509.Certificate{URIs: []*url.URL{u("spiffe://example.org/a")}}, MustParseID("spiffe://example.org/a"), false},
		{"nil cert", nil, ID{}, true},
		{"no URI", &x509.Certificate{}, ID{}, true},
		{"two URIs", &x509.Certificate{URIs: []*url.URL{u("spiffe://example.org/a"), u("spiffe://example.org/b")}}, ID{}, true},
		{"https URI", &x509.Certificate{URIs: []*url.URL{u("https://example.org/a")}}, ID{}, true},
		{"escaped path", &x509.Certificate{URIs: []*url.URL{u("spiffe://example.org/a%2Fb")}}, ID{}, true},
		{"upper-case host", &x509.Certificate{URIs: []*url.URL{u("spiffe://EXAMPLE.org/a")}}, ID{}, true},
		{"port", &x509.Certificate{URIs: []*url.URL{u("spiffe://example.org:1/a")}}, ID{}, true},
		{"opaque", &x509.Certificate{URIs: []*url.URL{u("spiffe:example.org/a")}}, ID{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IDFromCert(tt.cert)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("IDFromCert = %v, want error", got)
				}
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("error %v does not wrap ErrUnauthorized", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("IDFromCert = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestAuthorizers(t *testing.T) {
	a := MustParseID("spiffe://example.org/a")
	b := MustParseID("spiffe://example.org/b")
	o := MustParseID("spiffe://other.org/a")
	tests := []struct {
		name  string
		authz Authorizer
		peer  ID
		ok    bool
	}{
		{"ID match", AuthorizeID(a), a, true},
		{"ID mismatch", AuthorizeID(a), b, false},
		{"ID other domain", AuthorizeID(a), o, false},
		{"domain match", AuthorizeTrustDomain("example.org"), b, true},
		{"domain mismatch", AuthorizeTrustDomain("example.org"), o, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.authz(tt.peer)
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrUnauthorized) || ReasonOf(err) != ReasonWrongID {
				t.Fatalf("err = %v (reason %q), want ErrUnauthorized with %q", err, ReasonOf(err), ReasonWrongID)
			}
		})
	}
}

func TestVerifyError(t *testing.T) {
	cause := errors.New("boom")
	e := &VerifyError{Reason: ReasonExpired, Err: cause}
	if !errors.Is(e, ErrUnauthorized) || !errors.Is(e, cause) {
		t.Fatalf("VerifyError does not unwrap to ErrUnauthorized and its cause")
	}
	if got, want := e.Error(), "identity: peer refused (expired): boom"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	nilErr := &VerifyError{Reason: ReasonBadID}
	if got, want := nilErr.Error(), "identity: peer refused (bad_id)"; got != want {
		t.Fatalf("Error() with nil Err = %q, want %q", got, want)
	}
	if !errors.Is(nilErr, ErrUnauthorized) {
		t.Fatal("VerifyError with nil Err does not unwrap to ErrUnauthorized")
	}
	local := &VerifyError{Reason: ReasonNoIdentity, Err: ErrNoIdentity}
	if !strings.Contains(local.Error(), "handshake refused (no_local_identity)") || !errors.Is(local, ErrNoIdentity) {
		t.Fatalf("no-identity error = %q", local)
	}
}

func TestReasonOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain", errors.New("connection reset"), ReasonOther},
		{"verify error", &VerifyError{Reason: ReasonExpired}, ReasonExpired},
		{"wrapped verify error", errors.Join(errors.New("ctx"), &VerifyError{Reason: ReasonUntrusted}), ReasonUntrusted},
		{"unknown reason is bounded", &VerifyError{Reason: "made-up"}, ReasonOther},
		{"ErrNoIdentity", errors.Join(errors.New("x"), ErrNoIdentity), ReasonNoIdentity},
		{"flattened text", errors.New("CRYPTO_ERROR 0x12a (local): identity: peer refused (wrong_id): peer is x"), ReasonWrongID},
		{"flattened unknown reason", errors.New("identity: peer refused (bogus): x"), ReasonOther},
		{"crypto/tls no client cert", errors.New("tls: client didn't provide a certificate"), ReasonNoCertificate},
		{"bare ErrUnauthorized", ErrUnauthorized, ReasonOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReasonOf(tt.err); got != tt.want {
				t.Fatalf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestLocalID(t *testing.T) {
	ca := newTestCA(t, "example.org")
	id := MustParseID("spiffe://example.org/web")
	cert := issue(t, ca, id)
	noLeaf := &tls.Certificate{Certificate: cert.Certificate, PrivateKey: cert.PrivateKey}

	tests := []struct {
		name    string
		p       Provider
		want    ID
		wantErr error
	}{
		{"static", NewStaticProvider(cert, ca.Pool()), id, nil},
		{"leaf parsed on demand", fakeProvider{cert: noLeaf}, id, nil},
		{"no certificate", NewStaticProvider(nil, ca.Pool()), ID{}, ErrNoIdentity},
		{"nil provider", nil, ID{}, ErrNoIdentity},
		{"empty chain", fakeProvider{cert: &tls.Certificate{}}, ID{}, ErrNoIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LocalID(tt.p)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("LocalID = %v, %v; want error %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("LocalID = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
