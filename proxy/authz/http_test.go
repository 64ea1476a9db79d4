package authz

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
)

// httpSpec: route api admits web; its /admin subtree only batch, and
// only for writes; its /healthz anyone; gRPC method Delete of
// pkg.Store nobody, the rest of pkg.Store partner's trust domain.
var httpSpec = Spec{
	Routes: map[string][]string{"api": {web.String()}},
	HTTPRoutes: map[string][]HTTPRoute{"api": {
		{Name: "admin-writes", PathPrefix: "/admin/", Methods: []string{"POST", "DELETE"}, Allow: []string{batch.String()}},
		{Path: "/healthz", Allow: []string{Unauthenticated}},
		{Name: "store-delete", Path: "/pkg.Store/Delete", Allow: []string{Deny}},
		{Name: "store", PathPrefix: "/pkg.Store", Allow: []string{"spiffe://partner.org/*"}},
		{Name: "no-trace", Methods: []string{"TRACE"}, Allow: []string{Deny}},
	}},
}

func TestDecideHTTP(t *testing.T) {
	p, err := Parse(httpSpec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		route, method, target string // target: a request target as sent
		peer                  identity.ID
		allow                 bool
		reason, httpRoute     string
	}{
		// The first matching rule decides, segment-wise prefixes:
		{"api", "POST", "/admin", batch, true, ReasonID, "admin-writes"},
		{"api", "POST", "/admin/users/7", batch, true, ReasonID, "admin-writes"},
		{"api", "POST", "/admin/users/", web, false, ReasonNotAllowed, "admin-writes"},
		{"api", "DELETE", "/admin/x?y=/z", web, false, ReasonNotAllowed, "admin-writes"},
		// Another method or a longer segment is not the rule's: the
		// route's rule decides.
		{"api", "GET", "/admin/users", web, true, ReasonID, ""},
		{"api", "GET", "/admin/users", batch, false, ReasonNotAllowed, ""},
		{"api", "POST", "/administrator", web, true, ReasonID, ""},
		{"api", "post", "/admin", web, true, ReasonID, ""},
		// Exact paths:
		{"api", "GET", "/healthz", nobody, true, ReasonUnauthenticated, "#1"},
		{"api", "GET", "/healthz/", nobody, false, ReasonNoIdentity, ""},
		{"api", "GET", "/healthz/x", nobody, false, ReasonNoIdentity, ""},
		// gRPC methods are paths:
		{"api", "POST", "/pkg.Store/Delete", partner, false, ReasonDenyAll, "store-delete"},
		{"api", "POST", "/pkg.Store/Get", partner, true, ReasonTrustDomain, "store"},
		{"api", "POST", "/pkg.Store/Get", web, false, ReasonNotAllowed, "store"},
		{"api", "POST", "/pkg.StoreAdmin/Get", web, true, ReasonID, ""},
		// A method-only rule:
		{"api", "TRACE", "/anything", web, false, ReasonDenyAll, "no-trace"},
		// Every spelling an app could read as another path is refused
		// on a route with HTTP rules, whoever calls:
		{"api", "POST", "/x/../admin", batch, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/./healthz", nobody, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "//admin", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/admin;jsessionid=1", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/admin%2Fx", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/admin%252Fx", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/admin%5Cx", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "/a%00", web, false, ReasonPathNotCanonical, ""},
		{"api", "GET", "*", web, false, ReasonPathNotCanonical, ""},
		// Encodings that decode to the canonical path are that path:
		{"api", "POST", "/%61dmin/x", web, false, ReasonNotAllowed, "admin-writes"},
		// A route without HTTP rules ignores the path altogether:
		{"other", "GET", "/x/../admin;x", web, true, ReasonAllAuthenticated, ""},
	}
	for _, tt := range tests {
		t.Run(tt.route+" "+tt.method+" "+tt.target+" "+tt.peer.String(), func(t *testing.T) {
			u, err := url.ParseRequestURI(tt.target)
			if err != nil {
				u = &url.URL{Path: tt.target} // "*"
			}
			d := p.DecideHTTP(tt.route, tt.method, u.Path, u.RawPath, tt.peer)
			if d.Allow != tt.allow || d.Reason != tt.reason || d.HTTPRoute != tt.httpRoute {
				t.Errorf("DecideHTTP(%q, %q, path %q raw %q, %s) = %+v; want allow %v, reason %q, http route %q",
					tt.route, tt.method, u.Path, u.RawPath, tt.peer, d, tt.allow, tt.reason, tt.httpRoute)
			}
		})
	}
}

func TestParseHTTPRoutesErrors(t *testing.T) {
	ok := []string{web.String()}
	tests := []struct {
		name string
		hrs  []HTTPRoute
		want string
	}{
		{"none", []HTTPRoute{}, "no rules listed"},
		{"both paths", []HTTPRoute{{Path: "/a", PathPrefix: "/a", Allow: ok}}, "at most one"},
		{"matches everything", []HTTPRoute{{Allow: ok}}, "matches every request"},
		{"relative path", []HTTPRoute{{Path: "admin", Allow: ok}}, `"admin" does not start with /`},
		{"dot segment", []HTTPRoute{{PathPrefix: "/a/../b", Allow: ok}}, "not a canonical path"},
		{"double slash", []HTTPRoute{{Path: "//a", Allow: ok}}, "not a canonical path"},
		{"encoded", []HTTPRoute{{Path: "/a%2Fb", Allow: ok}}, "not a canonical path"},
		{"query", []HTTPRoute{{Path: "/a?b", Allow: ok}}, "without query"},
		{"lower-case method", []HTTPRoute{{Methods: []string{"get"}, Allow: ok}}, `method "get"`},
		{"method twice", []HTTPRoute{{Methods: []string{"GET", "GET"}, Allow: ok}}, "listed twice"},
		{"no callers", []HTTPRoute{{Name: "x", Path: "/a"}}, `rule "x": allow: no callers listed`},
		{"bad caller", []HTTPRoute{{Path: "/a", Allow: []string{"everyone"}}}, `rule "#0": allow: unknown caller`},
		{"name twice", []HTTPRoute{{Name: "x", Path: "/a", Allow: ok}, {Name: "x", Path: "/b", Allow: ok}}, "used twice"},
		{"too many", make([]HTTPRoute, maxHTTPRoutes+1), "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(Spec{HTTPRoutes: map[string][]HTTPRoute{"api": tt.hrs}})
			if err == nil {
				t.Fatalf("Parse accepted %+v: %v", tt.hrs, p)
			}
			if !strings.Contains(err.Error(), `http_routes for route "api"`) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name the route and contain %q", err, tt.want)
			}
		})
	}
	if _, err := Parse(Spec{HTTPRoutes: map[string][]HTTPRoute{"": {{Path: "/", Allow: ok}}}}); err == nil {
		t.Error("http_routes for an empty route name accepted")
	}
}

// The spec of a policy with HTTP rules round-trips, is a deep copy, and
// Routes names the routes of both maps.
func TestHTTPSpecRoundTrip(t *testing.T) {
	spec := httpSpec
	spec.HTTPRoutes = map[string][]HTTPRoute{"api": httpSpec.HTTPRoutes["api"], "web": {{Path: "/", Allow: []string{Deny}}}}
	p, err := Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Spec()
	s.HTTPRoutes["api"][0].Allow[0] = web.String()
	s.HTTPRoutes["api"][0].Methods[0] = "GET"
	q, err := Parse(p.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/admin/x", "/healthz", "/pkg.Store/Get", "/"} {
		for _, peer := range []identity.ID{web, batch, partner, nobody} {
			if a, b := p.DecideHTTP("api", "POST", target, "", peer), q.DecideHTTP("api", "POST", target, "", peer); a != b {
				t.Errorf("%s %s: %+v before the round trip, %+v after", target, peer, a, b)
			}
		}
	}
	if got := strings.Join(p.Routes(), ","); got != "api,web" {
		t.Errorf("Routes() = %s, want api,web", got)
	}
	if got := strings.Join(p.HTTPRoutes(), ","); got != "api,web" {
		t.Errorf("HTTPRoutes() = %s, want api,web", got)
	}
	if got, want := p.String(), "default all-authenticated, 1 route rule(s), 6 HTTP route rule(s)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// FuzzDecideHTTP judges arbitrary request targets against policies with
// HTTP rules read from arbitrary config text. Whatever parses must fail
// closed: a path that is not canonical is refused on a route with HTTP
// rules, a caller with no identity is allowed only by "unauthenticated",
// and every decision has a reason.
func FuzzDecideHTTP(f *testing.F) {
	f.Add([]byte(`{"http_routes":{"api":[{"path_prefix":"/admin","allow":["deny"]}]}}`), "POST", "/admin/x", "spiffe://test.local/ns/default/sa/web")
	f.Add([]byte(`{"default":"unauthenticated","http_routes":{"api":[{"path":"/a","methods":["GET"],"allow":["spiffe://x/*"]}]}}`), "GET", "/a/../a", "spiffe://x/y")
	f.Add([]byte(`{"routes":{"api":["deny"]},"http_routes":{"api":[{"methods":["GET"],"allow":["unauthenticated"]}]}}`), "GET", "/%2e%2e/x", "")
	f.Fuzz(func(t *testing.T, data []byte, method, target, peerText string) {
		spec, p, ok := fuzzPolicy(data)
		if !ok {
			return
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		peer, err := identity.ParseID(peerText)
		if err != nil {
			peer = identity.ID{}
		}
		for route, hrs := range spec.HTTPRoutes {
			d := p.DecideHTTP(route, method, u.Path, u.RawPath, peer)
			if d.Reason == "" {
				t.Fatalf("%s: a decision without a reason: %+v", data, d)
			}
			if !canonicalPath(u.Path, u.RawPath) && (d.Allow || d.Reason != ReasonPathNotCanonical) {
				t.Fatalf("%s: path %q (raw %q) is not canonical but decided %+v", data, u.Path, u.RawPath, d)
			}
			if peer.IsZero() && d.Allow && d.Reason != ReasonUnauthenticated {
				t.Fatalf("%s: a caller with no identity allowed %s %q: %+v", data, method, target, d)
			}
			if d.HTTPRoute != "" {
				found := false
				for i, hr := range hrs {
					found = found || hr.Name == d.HTTPRoute || hr.Name == "" && d.HTTPRoute == "#"+strconv.Itoa(i)
				}
				if !found {
					t.Fatalf("%s: decided by an HTTP rule %q the route does not have", data, d.HTTPRoute)
				}
			}
		}
	})
}
