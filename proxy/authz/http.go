package authz

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/quicmesh/quicmesh/identity"
)

// HTTPRoute is a rule for some of an inbound route's HTTP requests and
// gRPC calls, chosen by path and method: Linkerd's HTTPRoute as the
// target of an AuthorizationPolicy, reduced to the matches a sidecar
// can judge without the app's help. A route's HTTPRoutes are tried in
// order; the first whose match holds decides with its Allow list. A
// request no HTTPRoute matches is judged by the route's own rule (or the
// default), as are its tunnels, which have no path.
type HTTPRoute struct {
	// Name names the rule in logs; "" means "#N", its index.
	Name string `json:"name,omitempty"`
	// Path matches exactly that path; PathPrefix that path and every
	// path below it, segment by segment ("/admin" matches "/admin" and
	// "/admin/x", not "/administrator"). At most one of them; neither
	// matches every path. A gRPC method is the path
	// "/package.Service/Method", a whole service the prefix
	// "/package.Service".
	Path       string `json:"path,omitempty"`
	PathPrefix string `json:"path_prefix,omitempty"`
	// Methods are the request methods the rule covers ("GET", "POST");
	// empty means every method. gRPC calls are POSTs.
	Methods []string `json:"methods,omitempty"`
	// Allow is who may make the requests it matches, in the language of
	// a route's rule.
	Allow []string `json:"allow"`
}

// ReasonPathNotCanonical is the denial of a request to a route with
// HTTPRoutes whose path an app could read as another path than the one
// the rules were matched against ("/a/../admin", "/admin;x",
// "/a%2Fb", a backslash, a percent sign left after decoding): refused,
// so that no spelling of a path slips past a rule meant for it.
const ReasonPathNotCanonical = "path_not_canonical"

// maxHTTPRoutes bounds one route's HTTPRoutes: they are tried in order
// on every request.
const maxHTTPRoutes = 256

// httpRule is a parsed HTTPRoute.
type httpRule struct {
	exact, prefix string   // at most one set
	methods       []string // nil: any
	rule          *rule
}

func (h *httpRule) matches(method, p string) bool {
	if h.methods != nil && !slices.Contains(h.methods, method) {
		return false
	}
	switch {
	case h.exact != "":
		return p == h.exact
	case h.prefix == "/":
		return true
	case h.prefix != "":
		return strings.HasPrefix(p, h.prefix) && (len(p) == len(h.prefix) || p[len(h.prefix)] == '/')
	}
	return true
}

func parseHTTPRoutes(route string, hrs []HTTPRoute) ([]*httpRule, error) {
	if len(hrs) == 0 {
		return nil, fmt.Errorf("no rules listed: leave the route out of http_routes instead")
	}
	if len(hrs) > maxHTTPRoutes {
		return nil, fmt.Errorf("%d rules listed, at most %d", len(hrs), maxHTTPRoutes)
	}
	out := make([]*httpRule, 0, len(hrs))
	names := map[string]bool{}
	for i, hr := range hrs {
		name := hr.Name
		if name == "" {
			name = fmt.Sprintf("#%d", i)
		}
		if names[name] {
			return nil, fmt.Errorf("rule %q: the name is used twice", name)
		}
		names[name] = true
		h, err := parseHTTPRoute(route, name, hr)
		if err != nil {
			return nil, fmt.Errorf("rule %q: %w", name, err)
		}
		out = append(out, h)
	}
	return out, nil
}

func parseHTTPRoute(route, name string, hr HTTPRoute) (*httpRule, error) {
	h := &httpRule{}
	switch {
	case hr.Path != "" && hr.PathPrefix != "":
		return nil, fmt.Errorf("both path and path_prefix: a rule has at most one")
	case hr.Path != "":
		if err := checkRulePath(hr.Path); err != nil {
			return nil, fmt.Errorf("path: %w", err)
		}
		h.exact = hr.Path
	case hr.PathPrefix != "":
		// "/admin/" and "/admin" mean the same: segment-wise matching.
		p := hr.PathPrefix
		if len(p) > 1 {
			p = strings.TrimSuffix(p, "/")
		}
		if err := checkRulePath(p); err != nil {
			return nil, fmt.Errorf("path_prefix: %w", err)
		}
		h.prefix = p
	case len(hr.Methods) == 0:
		return nil, fmt.Errorf("matches every request: set path, path_prefix or methods, or write the rule under routes")
	}
	for _, m := range hr.Methods {
		if m == "" || strings.ToUpper(m) != m || strings.IndexFunc(m, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
			return nil, fmt.Errorf("method %q: want an upper-case method such as GET (methods are case-sensitive)", m)
		}
		if slices.Contains(h.methods, m) {
			return nil, fmt.Errorf("method %q listed twice", m)
		}
		h.methods = append(h.methods, m)
	}
	r, err := parseRule(route, hr.Allow)
	if err != nil {
		return nil, fmt.Errorf("allow: %w", err)
	}
	r.http = name
	h.rule = r
	return h, nil
}

// checkRulePath accepts only paths a request can have in canonical form
// (canonicalPath): a rule for any other could never match.
func checkRulePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q does not start with /", p)
	}
	if strings.ContainsAny(p, "?#") {
		return fmt.Errorf("%q: a path, without query or fragment", p)
	}
	if !canonicalPath(p, "") {
		return fmt.Errorf("%q is not a canonical path (no empty, . or .. segments, no ; \\ or %%)", p)
	}
	return nil
}

// canonicalPath reports whether p (a request's decoded path, raw its
// escaped form if that differs, as in net/url) can only be read as p: it
// is absolute and clean, and holds nothing that apps split, decode or
// strip in different ways (";" path parameters, backslashes, an encoded
// slash, a "%" left after decoding, control characters).
func canonicalPath(p, raw string) bool {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, ";\\%") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < 0x20 || p[i] == 0x7f {
			return false
		}
	}
	if raw != "" && (strings.Contains(raw, "%2f") || strings.Contains(raw, "%2F")) {
		return false
	}
	// path.Clean drops a trailing slash, which is a different path, not
	// another spelling of one.
	trimmed := p
	if len(p) > 1 {
		trimmed = strings.TrimSuffix(p, "/")
	}
	return path.Clean(p) == trimmed
}

// DecideHTTP judges an HTTP request or gRPC call to route: the first of
// the route's HTTPRoutes that matches method and the request's path
// decides; if none does, Decide. p is the decoded path (url.URL.Path),
// raw the escaped one when it differs (url.URL.RawPath). On a route with
// HTTPRoutes a path that is not canonical is refused.
func (p *Policy) DecideHTTP(route, method, reqPath, raw string, peer identity.ID) Decision {
	hrs := p.http[route]
	if len(hrs) == 0 {
		return p.Decide(route, peer)
	}
	if !canonicalPath(reqPath, raw) {
		return Decision{Reason: ReasonPathNotCanonical, Rule: route}
	}
	for _, h := range hrs {
		if h.matches(method, reqPath) {
			return h.rule.decide(peer)
		}
	}
	return p.Decide(route, peer)
}

// cloneHTTPRoutes is a deep copy, so a Spec handed out cannot change the
// policy's.
func cloneHTTPRoutes(hrs []HTTPRoute) []HTTPRoute {
	out := slices.Clone(hrs)
	for i := range out {
		out[i].Methods = slices.Clone(out[i].Methods)
		out[i].Allow = slices.Clone(out[i].Allow)
	}
	return out
}
