package authz

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
)

var (
	web     = identity.MustParseID("spiffe://test.local/ns/default/sa/web")
	batch   = identity.MustParseID("spiffe://test.local/ns/default/sa/batch")
	partner = identity.MustParseID("spiffe://partner.org/billing")
	nobody  = identity.ID{} // a caller that proved no identity
)

func TestDecide(t *testing.T) {
	spec := Spec{Routes: map[string][]string{
		"api":     {web.String(), "spiffe://partner.org/*"},
		"closed":  {Deny},
		"public":  {Unauthenticated},
		"members": {AllAuthenticated},
	}}
	p, err := Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		route  string
		peer   identity.ID
		allow  bool
		reason string
		rule   string
	}{
		{"api", web, true, ReasonID, "api"},
		{"api", partner, true, ReasonTrustDomain, "api"},
		{"api", batch, false, ReasonNotAllowed, "api"},
		{"api", nobody, false, ReasonNoIdentity, "api"},
		{"closed", web, false, ReasonDenyAll, "closed"},
		{"closed", nobody, false, ReasonDenyAll, "closed"},
		{"public", web, true, ReasonUnauthenticated, "public"},
		{"public", nobody, true, ReasonUnauthenticated, "public"},
		{"members", partner, true, ReasonAllAuthenticated, "members"},
		{"members", nobody, false, ReasonNoIdentity, "members"},
		// Routes the policy does not name take the default:
		// all-authenticated.
		{"other", batch, true, ReasonAllAuthenticated, ""},
		{"other", nobody, false, ReasonNoIdentity, ""},
	}
	for _, tt := range tests {
		t.Run(tt.route+" "+tt.peer.String(), func(t *testing.T) {
			d := p.Decide(tt.route, tt.peer)
			if d.Allow != tt.allow || d.Reason != tt.reason || d.Rule != tt.rule {
				t.Errorf("Decide(%q, %q) = %+v; want allow %v, reason %q, rule %q", tt.route, tt.peer, d, tt.allow, tt.reason, tt.rule)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		def            string
		peer           identity.ID
		allow          bool
		reason         string
		wantDefaultKey string
	}{
		{"", web, true, ReasonAllAuthenticated, AllAuthenticated},
		{"", nobody, false, ReasonNoIdentity, AllAuthenticated},
		{Deny, web, false, ReasonDenyAll, Deny},
		{Unauthenticated, nobody, true, ReasonUnauthenticated, Unauthenticated},
		{"spiffe://partner.org/*", partner, true, ReasonTrustDomain, "spiffe://partner.org/*"},
		{"spiffe://partner.org/*", web, false, ReasonNotAllowed, "spiffe://partner.org/*"},
		{web.String(), web, true, ReasonID, web.String()},
	}
	for _, tt := range tests {
		t.Run(tt.def+" "+tt.peer.String(), func(t *testing.T) {
			p, err := Parse(Spec{Default: tt.def})
			if err != nil {
				t.Fatal(err)
			}
			if d := p.Decide("any", tt.peer); d.Allow != tt.allow || d.Reason != tt.reason {
				t.Errorf("default %q: %+v; want allow %v, reason %q", tt.def, d, tt.allow, tt.reason)
			}
			if got := p.Spec().Default; got != tt.wantDefaultKey {
				t.Errorf("Spec().Default = %q, want %q", got, tt.wantDefaultKey)
			}
		})
	}
	if d := Default().Decide("x", web); !d.Allow || d.Reason != ReasonAllAuthenticated {
		t.Errorf("Default() decides %+v for a verified peer", d)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string // in the error
	}{
		{"empty list", Spec{Routes: map[string][]string{"api": {}}}, `route "api": no callers listed: to refuse every caller write ["deny"]`},
		{"null list", Spec{Routes: map[string][]string{"api": nil}}, "no callers listed"},
		{"unknown keyword", Spec{Routes: map[string][]string{"api": {"everyone"}}}, `unknown caller "everyone"`},
		{"unknown default", Spec{Default: "allow"}, `authorization default: unknown caller "allow"`},
		{"deny mixed", Spec{Routes: map[string][]string{"api": {Deny, web.String()}}}, `"deny" must be the only entry`},
		{"unauthenticated mixed", Spec{Routes: map[string][]string{"api": {web.String(), Unauthenticated}}}, `"unauthenticated" must be the only entry`},
		{"bad ID", Spec{Routes: map[string][]string{"api": {"spiffe://Test/x"}}}, `"spiffe://Test/x"`},
		{"bare trust domain", Spec{Routes: map[string][]string{"api": {"spiffe://test.local"}}}, `write "spiffe://test.local/*"`},
		{"bad trust domain", Spec{Routes: map[string][]string{"api": {"spiffe://UP/*"}}}, `"spiffe://UP/*"`},
		{"wildcard inside a path", Spec{Routes: map[string][]string{"api": {"spiffe://test.local/ns/*"}}}, `"spiffe://test.local/ns/*"`},
		{"duplicate ID", Spec{Routes: map[string][]string{"api": {web.String(), web.String()}}}, "listed twice"},
		{"duplicate domain", Spec{Routes: map[string][]string{"api": {"spiffe://a/*", "spiffe://a/*"}}}, "listed twice"},
		{"ID inside a listed domain", Spec{Routes: map[string][]string{"api": {web.String(), "spiffe://test.local/*"}}}, "is redundant"},
		{"empty route name", Spec{Routes: map[string][]string{"": {Deny}}}, "empty name"},
		{"too many", Spec{Routes: map[string][]string{"api": make([]string, maxEntries+1)}}, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.spec)
			if err == nil {
				t.Fatalf("Parse(%+v) = %v, want an error", tt.spec, p)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// TestSpecRoundTrip: what a Policy reports as its spec parses back into
// a policy that decides the same, and is a copy the caller may change.
func TestSpecRoundTrip(t *testing.T) {
	p, err := Parse(Spec{Default: Deny, Routes: map[string][]string{"api": {web.String()}, "pub": {Unauthenticated}}})
	if err != nil {
		t.Fatal(err)
	}
	s := p.Spec()
	s.Routes["api"][0] = batch.String()
	q, err := Parse(p.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for _, route := range []string{"api", "pub", "other"} {
		for _, peer := range []identity.ID{web, batch, nobody} {
			if a, b := p.Decide(route, peer), q.Decide(route, peer); a != b {
				t.Errorf("%s %s: %+v before the round trip, %+v after", route, peer, a, b)
			}
		}
	}
	if got := p.Routes(); len(got) != 2 || got[0] != "api" || got[1] != "pub" {
		t.Errorf("Routes() = %v", got)
	}
	if got, want := p.String(), "default deny, 2 route rule(s)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// FuzzParse feeds the parser arbitrary config text. Whatever parses must
// fail closed: a caller with no identity is allowed only by a rule that
// says "unauthenticated", a "deny" rule allows nobody, a listed ID is
// allowed, and the policy round-trips through Spec.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"default":"deny"}`,
		`{"default":"unauthenticated","routes":{"a":["deny"]}}`,
		`{"routes":{"api":["spiffe://test.local/ns/default/sa/web","spiffe://partner.org/*"]}}`,
		`{"routes":{"api":["all-authenticated"],"b":["spiffe://x/*"]}}`,
		`{"routes":{"api":[]}}`,
		`{"routes":{"api":["spiffe://test.local"]}}`,
	} {
		f.Add([]byte(s), "spiffe://test.local/ns/default/sa/web", "api")
	}
	f.Fuzz(func(t *testing.T, data []byte, peerText, route string) {
		spec, p, ok := fuzzPolicy(data)
		if !ok {
			return
		}
		peer, err := identity.ParseID(peerText)
		if err != nil {
			peer = identity.ID{}
		}
		entries := spec.Routes[route]
		if _, named := spec.Routes[route]; !named {
			def := spec.Default
			if def == "" {
				def = DefaultRule
			}
			entries = []string{def}
		}
		for _, who := range []identity.ID{peer, {}} {
			d := p.Decide(route, who)
			if d.Reason == "" {
				t.Fatalf("%s for %q: a decision without a reason: %+v", data, who, d)
			}
			if who.IsZero() && d.Allow && !(len(entries) == 1 && entries[0] == Unauthenticated) {
				t.Fatalf("%s: a caller with no identity allowed on %q by %v: %+v", data, route, entries, d)
			}
			if len(entries) == 1 && entries[0] == Deny && d.Allow {
				t.Fatalf("%s: a deny rule allowed %q", data, who)
			}
			if !who.IsZero() && !d.Allow {
				for _, e := range entries {
					if e == who.String() || e == "spiffe://"+who.TrustDomain+"/*" {
						t.Fatalf("%s: %q listed in %v but denied: %+v", data, who, entries, d)
					}
				}
			}
		}
		q, err := Parse(p.Spec())
		if err != nil {
			t.Fatalf("%s: the parsed spec does not parse again: %v", data, err)
		}
		if a, b := p.Decide(route, peer), q.Decide(route, peer); a != b {
			t.Fatalf("%s: %+v before the round trip, %+v after", data, a, b)
		}
	})
}

// fuzzPolicy reads a fuzzer's config text as a Spec, strictly as the
// sidecar does, and parses it; ok is false if either fails.
func fuzzPolicy(data []byte) (spec Spec, p *Policy, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if dec.Decode(&spec) != nil {
		return spec, nil, false
	}
	p, err := Parse(spec)
	return spec, p, err == nil
}

// BenchmarkDecide is the per-request cost of the policy: a route with a
// list of IDs and trust domains, a caller matched by trust domain.
func BenchmarkDecide(b *testing.B) {
	ids := []string{"spiffe://partner.org/*"}
	for i := range 50 {
		ids = append(ids, fmt.Sprintf("spiffe://test.local/ns/default/sa/w%d", i))
	}
	p, err := Parse(Spec{Routes: map[string][]string{"api": ids, "other": {Deny}}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !p.Decide("api", partner).Allow {
			b.Fatal("denied")
		}
	}
}
