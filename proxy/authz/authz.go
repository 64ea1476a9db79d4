// Package authz is the inbound authorization policy: per inbound route
// (and, for HTTP and gRPC, per path and method: http.go),
// which callers may reach the app behind it. Linkerd's Server and
// AuthorizationPolicy resources are the model, reduced to what a sidecar
// configured by a file needs: a default for every route and, per route,
// a list of allowed callers.
//
// A policy is written as a Spec (the "inbound.authorization" config key),
// parsed once by Parse into an immutable *Policy, and evaluated per
// request or tunnel by Decide, which takes a map lookup and at most two
// more: nothing is parsed or allocated on the request path. A Policy is
// safe for concurrent use; a reload replaces it whole.
//
// Callers are named by what the transport verified:
//
//	spiffe://TD/PATH   that exact SPIFFE ID
//	spiffe://TD/*      any identity in trust domain TD
//	all-authenticated  any caller with a verified identity
//	unauthenticated    any caller at all, also one with no identity
//	deny               nobody (alone in its list)
//
// A caller with no identity (the zero identity.ID: a plain-TCP client of
// a non-mesh listener; over mutually-authenticated QUIC it cannot
// happen) is allowed only by "unauthenticated": no other entry matches
// it, so a policy fails closed for it.
package authz

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/quicmesh/quicmesh/identity"
)

// The keywords of the policy language.
const (
	AllAuthenticated = "all-authenticated"
	Unauthenticated  = "unauthenticated"
	Deny             = "deny"
)

// DefaultRule is the rule of routes the policy does not name when Spec
// leaves Default empty: every verified mesh identity, which is what the
// transport's own trust-domain check already lets in.
const DefaultRule = AllAuthenticated

// Reasons a decision was made: the reason label of the decision metric,
// a fixed set so the label stays bounded.
const (
	// Allowed by ...
	ReasonUnauthenticated  = "unauthenticated"   // a rule that allows every caller
	ReasonAllAuthenticated = "all_authenticated" // a rule that allows every verified identity
	ReasonID               = "id"                // the caller's exact SPIFFE ID
	ReasonTrustDomain      = "trust_domain"      // the caller's trust domain
	// Denied because ...
	ReasonNoIdentity = "no_identity" // the caller proved no identity and the rule needs one
	ReasonNotAllowed = "not_allowed" // the caller's identity is not in the rule's list
	ReasonDenyAll    = "deny"        // the rule allows nobody
)

// Spec is a policy as written: the "inbound.authorization" object of the
// sidecar's config file.
type Spec struct {
	// Default is the rule of every route Routes does not name: one entry
	// of the language above; "" means DefaultRule.
	Default string `json:"default,omitempty"`
	// Routes maps an inbound route (a key of the sidecar's routes) to the
	// callers allowed to reach it.
	Routes map[string][]string `json:"routes,omitempty"`
	// HTTPRoutes maps an inbound route to rules for some of its HTTP
	// requests and gRPC calls, by path and method (http.go); requests
	// none of them matches, and tunnels, follow Routes and Default.
	HTTPRoutes map[string][]HTTPRoute `json:"http_routes,omitempty"`
}

// Decision is the outcome of Decide.
type Decision struct {
	Allow bool
	// Reason is one of the Reason constants.
	Reason string
	// Rule is the route whose own rule decided, or "" when the default
	// did (for logs).
	Rule string
	// HTTPRoute is the name of the route's HTTPRoute that decided, ""
	// if none did.
	HTTPRoute string
}

// Policy is a parsed Spec. The zero value is not usable: use Parse or
// Default.
type Policy struct {
	def    *rule
	routes map[string]*rule
	http   map[string][]*httpRule
	spec   Spec // what was parsed, normalised, for Spec and logs
}

// rule is who may call one route.
type rule struct {
	unauthenticated  bool // every caller, identity or not
	allAuthenticated bool // every verified identity
	// ids and domains are exact SPIFFE IDs and trust domains; both empty
	// with neither flag set: nobody.
	ids     map[identity.ID]struct{}
	domains map[string]struct{}
	name    string // the route, "" for the default
	http    string // the HTTPRoute's name, "" for a route's own rule
}

// Default is the policy of a sidecar that configures none: DefaultRule
// for every route.
func Default() *Policy {
	p, err := Parse(Spec{})
	if err != nil {
		panic(err) // the empty spec always parses
	}
	return p
}

// maxEntries bounds one rule's list, so a config cannot make a rule
// arbitrarily large (the file itself is bounded too).
const maxEntries = 4096

// Parse checks spec and compiles it. Every error names the route and
// entry at fault. A route's list must not be empty (write ["deny"] to
// refuse every caller: an empty list is more often a mistake than an
// intent), nor mix "deny" or a keyword that allows a superset with other
// entries.
func Parse(spec Spec) (*Policy, error) {
	p := &Policy{routes: make(map[string]*rule, len(spec.Routes))}
	defSpec := spec.Default
	if defSpec == "" {
		defSpec = DefaultRule
	}
	def, err := parseRule("", []string{defSpec})
	if err != nil {
		return nil, fmt.Errorf("authorization default: %w", err)
	}
	p.def = def
	p.spec = Spec{Default: defSpec, Routes: make(map[string][]string, len(spec.Routes))}
	for _, name := range slices.Sorted(maps.Keys(spec.Routes)) {
		if name == "" {
			return nil, errors.New("authorization: a route with an empty name")
		}
		entries := spec.Routes[name]
		r, err := parseRule(name, entries)
		if err != nil {
			return nil, fmt.Errorf("authorization for route %q: %w", name, err)
		}
		p.routes[name] = r
		p.spec.Routes[name] = slices.Clone(entries)
	}
	for _, name := range slices.Sorted(maps.Keys(spec.HTTPRoutes)) {
		if name == "" {
			return nil, errors.New("authorization: http_routes for a route with an empty name")
		}
		hrs, err := parseHTTPRoutes(name, spec.HTTPRoutes[name])
		if err != nil {
			return nil, fmt.Errorf("authorization http_routes for route %q: %w", name, err)
		}
		if p.http == nil {
			p.http = make(map[string][]*httpRule, len(spec.HTTPRoutes))
			p.spec.HTTPRoutes = make(map[string][]HTTPRoute, len(spec.HTTPRoutes))
		}
		p.http[name] = hrs
		p.spec.HTTPRoutes[name] = cloneHTTPRoutes(spec.HTTPRoutes[name])
	}
	return p, nil
}

func parseRule(name string, entries []string) (*rule, error) {
	if len(entries) == 0 {
		return nil, fmt.Errorf("no callers listed: to refuse every caller write [%q]", Deny)
	}
	if len(entries) > maxEntries {
		return nil, fmt.Errorf("%d callers listed, at most %d", len(entries), maxEntries)
	}
	r := &rule{name: name}
	for _, e := range entries {
		switch {
		case e == Deny || e == Unauthenticated || e == AllAuthenticated:
			if len(entries) > 1 {
				return nil, fmt.Errorf("%q must be the only entry of its list", e)
			}
			r.unauthenticated = e == Unauthenticated
			r.allAuthenticated = e == AllAuthenticated
		case strings.HasPrefix(e, "spiffe://") && strings.HasSuffix(e, "/*"):
			td := strings.TrimSuffix(strings.TrimPrefix(e, "spiffe://"), "/*")
			if err := identity.CheckTrustDomain(td); err != nil {
				return nil, fmt.Errorf("%q: %w", e, err)
			}
			if r.domains == nil {
				r.domains = map[string]struct{}{}
			}
			if _, dup := r.domains[td]; dup {
				return nil, fmt.Errorf("%q listed twice", e)
			}
			r.domains[td] = struct{}{}
		case strings.HasPrefix(e, "spiffe://"):
			id, err := identity.ParseID(e)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", e, err)
			}
			if id.Path == "" {
				return nil, fmt.Errorf("%q names a trust domain, not a workload: write %q for any identity in it", e, e+"/*")
			}
			if r.ids == nil {
				r.ids = map[identity.ID]struct{}{}
			}
			if _, dup := r.ids[id]; dup {
				return nil, fmt.Errorf("%q listed twice", e)
			}
			r.ids[id] = struct{}{}
		default:
			return nil, fmt.Errorf("unknown caller %q: want a SPIFFE ID (spiffe://TD/PATH), a trust domain (spiffe://TD/*), %q, %q or %q",
				e, AllAuthenticated, Unauthenticated, Deny)
		}
	}
	// An ID inside a listed trust domain is redundant, and probably
	// a sign the operator meant something narrower.
	for id := range r.ids {
		if _, ok := r.domains[id.TrustDomain]; ok {
			return nil, fmt.Errorf("%q is redundant: its trust domain spiffe://%s/* is listed", id.String(), id.TrustDomain)
		}
	}
	return r, nil
}

// Decide says whether peer may call route: the route's rule if the
// policy names it, else the default. A zero peer is a caller with no
// identity.
func (p *Policy) Decide(route string, peer identity.ID) Decision {
	r, ok := p.routes[route]
	if !ok {
		r = p.def
	}
	return r.decide(peer)
}

func (r *rule) decide(peer identity.ID) Decision {
	d := Decision{Rule: r.name, HTTPRoute: r.http}
	switch {
	case r.unauthenticated:
		d.Allow, d.Reason = true, ReasonUnauthenticated
	case !r.allAuthenticated && len(r.ids) == 0 && len(r.domains) == 0:
		d.Reason = ReasonDenyAll
	case peer.IsZero():
		d.Reason = ReasonNoIdentity
	case r.allAuthenticated:
		d.Allow, d.Reason = true, ReasonAllAuthenticated
	default:
		if _, ok := r.ids[peer]; ok {
			d.Allow, d.Reason = true, ReasonID
		} else if _, ok := r.domains[peer.TrustDomain]; ok {
			d.Allow, d.Reason = true, ReasonTrustDomain
		} else {
			d.Reason = ReasonNotAllowed
		}
	}
	return d
}

// Routes are the routes the policy names, in Routes or HTTPRoutes,
// sorted.
func (p *Policy) Routes() []string {
	names := slices.Collect(maps.Keys(p.routes))
	for name := range p.http {
		if _, ok := p.routes[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// HTTPRoutes are the routes that have HTTPRoutes, sorted.
func (p *Policy) HTTPRoutes() []string { return slices.Sorted(maps.Keys(p.http)) }

// Spec is the policy as parsed, with the default filled in: Parse(p.Spec())
// is a policy that decides as p does.
func (p *Policy) Spec() Spec {
	s := Spec{Default: p.spec.Default, Routes: make(map[string][]string, len(p.spec.Routes))}
	for k, v := range p.spec.Routes {
		s.Routes[k] = slices.Clone(v)
	}
	if p.spec.HTTPRoutes != nil {
		s.HTTPRoutes = make(map[string][]HTTPRoute, len(p.spec.HTTPRoutes))
		for k, v := range p.spec.HTTPRoutes {
			s.HTTPRoutes[k] = cloneHTTPRoutes(v)
		}
	}
	return s
}

// String summarises the policy for logs: the default and how many routes
// have their own rule.
func (p *Policy) String() string {
	n := 0
	for _, hrs := range p.http {
		n += len(hrs)
	}
	if n == 0 {
		return fmt.Sprintf("default %s, %d route rule(s)", p.spec.Default, len(p.routes))
	}
	return fmt.Sprintf("default %s, %d route rule(s), %d HTTP route rule(s)", p.spec.Default, len(p.routes), n)
}
