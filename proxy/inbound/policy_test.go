package inbound

import (
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

var otherPeer = identity.MustParseID("spiffe://test.local/ns/default/sa/other")

// testPolicy is a policy layer over routes web (HTTP) and db (TCP):
// web admits testPeer only, db refuses everyone, pub admits anyone.
func testPolicy(t *testing.T, reg *prometheus.Registry) *policy {
	t.Helper()
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1", "db": "tcp://127.0.0.1:2", "pub": "127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := authz.Parse(authz.Spec{Routes: map[string][]string{
		"web": {testPeer.String()},
		"db":  {authz.Deny},
		"pub": {authz.Unauthenticated},
	}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := newPolicy(Config{Logger: discard, Metrics: telemetry.New(reg), Options: Options{Authorization: p}}, routes)
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// decisions reads quicmesh_authz_decisions_total for one label set.
func decisions(t *testing.T, reg *prometheus.Registry, route, proto, decision, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"route": route, "proto": proto, "decision": decision, "reason": reason}
	for _, mf := range mfs {
		if mf.GetName() != "quicmesh_authz_decisions_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// The HTTP (policy) layer, under mapErrors as in the chain: an allowed
// request goes on; a denied one gets 403, or PERMISSION_DENIED for gRPC,
// with the reason, reaches nothing below, and every decision is counted
// once by route, protocol and reason.
func TestAuthorize(t *testing.T) {
	grpc := http.Header{"Content-Type": {"application/grpc"}}
	tests := []struct {
		name       string
		route      string
		peer       identity.ID
		header     http.Header
		wantNext   bool
		wantStatus int    // when denied
		wantGRPC   string // when denied, for gRPC
		proto      string
		reason     string
	}{
		{"listed caller", "web", testPeer, nil, true, 0, "", "http", authz.ReasonID},
		{"listed caller, gRPC", "web", testPeer, grpc, true, 0, "", "grpc", authz.ReasonID},
		{"caller not listed", "web", otherPeer, nil, false, http.StatusForbidden, "", "http", authz.ReasonNotAllowed},
		{"caller not listed, gRPC", "web", otherPeer, grpc, false, http.StatusOK, "7", "grpc", authz.ReasonNotAllowed},
		{"no identity", "web", identity.ID{}, nil, false, http.StatusForbidden, "", "http", authz.ReasonNoIdentity},
		{"no identity, gRPC", "web", identity.ID{}, grpc, false, http.StatusOK, "7", "grpc", authz.ReasonNoIdentity},
		{"no identity on an unauthenticated route", "pub", identity.ID{}, nil, true, 0, "", "http", authz.ReasonUnauthenticated},
		{"deny-all route", "db", testPeer, nil, false, http.StatusForbidden, "", "http", authz.ReasonDenyAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			pol := testPolicy(t, reg)
			rt, _ := pol.routes.lookup(tt.route)
			next := &nextHTTP{res: bridge.Result{Status: 204}}
			c, w := newCall("POST", tt.route, tt.header)
			c.peer, c.route = tt.peer, rt
			res := serveAuthorize(t, pol, c, next, tt.wantNext)
			decision := "allow"
			if !tt.wantNext {
				decision = "deny"
				if w.Code != tt.wantStatus || w.Header().Get("Grpc-Status") != tt.wantGRPC || res.Status != tt.wantStatus {
					t.Fatalf("status %d, grpc-status %q (result %+v); want %d, %q", w.Code, w.Header().Get("Grpc-Status"), res, tt.wantStatus, tt.wantGRPC)
				}
				msg := w.Header().Get(httpx.HeaderProxyError)
				wantMsg := callerName(tt.peer) + ` is not authorized for route "` + tt.route + `" (` + tt.reason + ")"
				if !strings.Contains(msg, wantMsg) {
					t.Errorf("%s = %q, want it to contain %q", httpx.HeaderProxyError, msg, wantMsg)
				}
			}
			if got := decisions(t, reg, tt.route, tt.proto, decision, tt.reason); got != 1 {
				t.Errorf("decisions{route=%s,proto=%s,decision=%s,reason=%s} = %v, want 1", tt.route, tt.proto, decision, tt.reason, got)
			}
			if got := metricSum(t, reg, "quicmesh_authz_decisions_total"); got != 1 {
				t.Errorf("%v decisions counted in all, want 1", got)
			}
		})
	}
}

// serveAuthorize runs c through the (policy) layer under mapErrors, as in
// the chain, and checks whether it reached next.
func serveAuthorize(t *testing.T, pol *policy, c *httpCall, next *nextHTTP, wantNext bool) bridge.Result {
	t.Helper()
	res, err := mapErrors{next: authorize{next: next, policy: pol}, who: "inbound test"}.serveHTTP(c)
	if err != nil {
		t.Fatal(err)
	}
	if (next.called != nil) != wantNext {
		t.Fatalf("next called: %v, want %v", next.called != nil, wantNext)
	}
	return res
}

// The tunnel (policy) layer, under mapResets as in the chain: a denied
// tunnel is reset with meshcode.Forbidden and nothing below it runs (so
// no app is dialled).
func TestAuthorizeTunnel(t *testing.T) {
	tests := []struct {
		name      string
		route     string
		peer      identity.ID
		wantNext  bool
		wantReset meshcode.Code
		reason    string
	}{
		{"listed caller", "web", testPeer, true, 0, authz.ReasonID},
		{"caller not listed", "web", otherPeer, false, meshcode.Forbidden, authz.ReasonNotAllowed},
		{"no identity", "web", identity.ID{}, false, meshcode.Forbidden, authz.ReasonNoIdentity},
		{"no identity on an unauthenticated route", "pub", identity.ID{}, true, 0, authz.ReasonUnauthenticated},
		{"deny-all route", "db", testPeer, false, meshcode.Forbidden, authz.ReasonDenyAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			pol := testPolicy(t, reg)
			rt, _ := pol.routes.lookup(tt.route)
			a, b := net.Pipe()
			defer b.Close()
			str := &fakeTunnel{Conn: a}
			next := &nextTunnel{}
			err := mapResets{next: authorizeTunnel{next: next, policy: pol}}.serveTunnel(&tunnelCall{str: str, peer: tt.peer, route: rt, target: tt.route, log: discard})
			if err != nil {
				t.Fatal(err)
			}
			if (next.called != nil) != tt.wantNext {
				t.Fatalf("next called: %v, want %v", next.called != nil, tt.wantNext)
			}
			decision := "allow"
			if !tt.wantNext {
				decision = "deny"
				if len(str.resets) != 1 || str.resets[0] != tt.wantReset {
					t.Fatalf("resets %v, want [%#x]", str.resets, tt.wantReset)
				}
			} else if len(str.resets) != 0 {
				t.Fatalf("an allowed tunnel was reset: %v", str.resets)
			}
			if got := decisions(t, reg, tt.route, "tcp", decision, tt.reason); got != 1 {
				t.Errorf("decisions{route=%s,proto=tcp,decision=%s,reason=%s} = %v, want 1", tt.route, decision, tt.reason, got)
			}
		})
	}
}

// A policy is put in force only if every route it names is served; a
// refused one leaves the policy in force unchanged (fail safe).
func TestSetAuthorization(t *testing.T) {
	s, err := New(Config{Options: Options{Routes: Routes{"web": "127.0.0.1:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := s.Authorization().Decide("web", otherPeer); !d.Allow || d.Reason != authz.ReasonAllAuthenticated {
		t.Fatalf("no policy configured: %+v, want the default (all-authenticated)", d)
	}
	strict, err := authz.Parse(authz.Spec{Routes: map[string][]string{"web": {testPeer.String()}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAuthorization(strict); err != nil {
		t.Fatal(err)
	}
	typo, err := authz.Parse(authz.Spec{Default: authz.Unauthenticated, Routes: map[string][]string{"wbe": {authz.Deny}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*authz.Policy{typo, nil} {
		err := s.SetAuthorization(bad)
		if err == nil {
			t.Fatalf("SetAuthorization(%v) accepted", bad)
		}
		if bad != nil && !strings.Contains(err.Error(), `route "wbe": no such inbound route`) {
			t.Errorf("error %q does not name the unknown route", err)
		}
		if s.Authorization() != strict {
			t.Fatalf("a refused policy replaced the one in force")
		}
	}
	if _, err := New(Config{Options: Options{Routes: Routes{"web": "127.0.0.1:1"}, Authorization: typo}}); err == nil || !strings.Contains(err.Error(), "no such inbound route") {
		t.Errorf("New with a policy naming an unknown route: %v", err)
	}
}

// A refusal is logged with the caller, route, reason and which rule
// refused, once per route, caller and reason per interval: a refused
// caller repeating at the rate of its traffic writes one line.
func TestDenyLog(t *testing.T) {
	var logs testkit.LogBuffer
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1", "db": "tcp://127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := authz.Parse(authz.Spec{Default: authz.Deny, Routes: map[string][]string{"web": {testPeer.String()}}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := newPolicy(Config{Logger: logs.Logger(slog.LevelInfo), Options: Options{Authorization: p}}, routes)
	if err != nil {
		t.Fatal(err)
	}
	web, _ := routes.lookup("web")
	db, _ := routes.lookup("db")
	for range 3 {
		pol.decide(web, otherPeer, "http")
	}
	pol.decide(web, testPeer, "http") // allowed: not logged
	pol.decide(db, testPeer, "tcp")
	lines := logs.Lines("authorization denied")
	if len(lines) != 2 {
		t.Fatalf("%d deny lines, want 2 (one per route, caller and reason):\n%s", len(lines), logs.String())
	}
	for i, want := range []string{
		"route=web proto=http caller=" + otherPeer.String() + " reason=not_allowed rule=route",
		"route=db proto=tcp caller=" + testPeer.String() + " reason=deny rule=default",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %q does not contain %q", lines[i], want)
		}
	}
}

// The HTTP (policy) layer judges by the route's HTTP rules for the
// request's method and path: HTTP/1.1 gets 403 and gRPC
// PERMISSION_DENIED naming the rule, a request the rules do not cover
// follows the route's rule, and a path an app could read otherwise is
// refused; each decision is counted once.
func TestAuthorizeHTTPRoutes(t *testing.T) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	spec := authz.Spec{
		Routes: map[string][]string{"web": {testPeer.String(), otherPeer.String()}},
		HTTPRoutes: map[string][]authz.HTTPRoute{"web": {
			{Name: "admin", PathPrefix: "/admin", Allow: []string{testPeer.String()}},
			{Name: "purge", Path: "/pkg.Cache/Purge", Allow: []string{authz.Deny}},
		}},
	}
	grpc := http.Header{"Content-Type": {"application/grpc"}}
	tests := []struct {
		name       string
		method     string
		target     string
		peer       identity.ID
		header     http.Header
		wantNext   bool
		wantStatus int
		wantGRPC   string
		proto      string
		reason     string
		wantMsg    string // in the refusal
	}{
		{"admin, listed", "POST", "/admin/users", testPeer, nil, true, 0, "", "http", authz.ReasonID, ""},
		{"admin, not listed", "POST", "/admin/users", otherPeer, nil, false, http.StatusForbidden, "", "http", authz.ReasonNotAllowed, `for route "web", HTTP rule "admin" (not_allowed)`},
		{"outside the rules", "GET", "/shop", otherPeer, nil, true, 0, "", "http", authz.ReasonID, ""},
		{"not canonical", "GET", "/shop/../admin", testPeer, nil, false, http.StatusForbidden, "", "http", authz.ReasonPathNotCanonical, `for route "web" (path_not_canonical)`},
		{"gRPC method denied", "POST", "/pkg.Cache/Purge", testPeer, grpc, false, http.StatusOK, "7", "grpc", authz.ReasonDenyAll, `HTTP rule "purge" (deny)`},
		{"gRPC other method", "POST", "/pkg.Cache/Get", otherPeer, grpc, true, 0, "", "grpc", authz.ReasonID, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			p, err := authz.Parse(spec)
			if err != nil {
				t.Fatal(err)
			}
			pol, err := newPolicy(Config{Logger: discard, Metrics: telemetry.New(reg), Options: Options{Authorization: p}}, routes)
			if err != nil {
				t.Fatal(err)
			}
			rt, _ := pol.routes.lookup("web")
			next := &nextHTTP{res: bridge.Result{Status: 204}}
			c, w := newCall(tt.method, "web", tt.header)
			c.r.URL, err = url.ParseRequestURI(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			c.peer, c.route = tt.peer, rt
			serveAuthorize(t, pol, c, next, tt.wantNext)
			decision := "allow"
			if !tt.wantNext {
				decision = "deny"
				if w.Code != tt.wantStatus || w.Header().Get("Grpc-Status") != tt.wantGRPC {
					t.Fatalf("status %d, grpc-status %q; want %d, %q", w.Code, w.Header().Get("Grpc-Status"), tt.wantStatus, tt.wantGRPC)
				}
				if msg := w.Header().Get(httpx.HeaderProxyError) + w.Header().Get("Grpc-Message"); !strings.Contains(msg, tt.wantMsg) {
					t.Errorf("refusal %q does not contain %q", msg, tt.wantMsg)
				}
			}
			if got := decisions(t, reg, "web", tt.proto, decision, tt.reason); got != 1 {
				t.Errorf("decisions{route=web,proto=%s,decision=%s,reason=%s} = %v, want 1", tt.proto, decision, tt.reason, got)
			}
			if got := metricSum(t, reg, "quicmesh_authz_decisions_total"); got != 1 {
				t.Errorf("%v decisions counted in all, want 1", got)
			}
		})
	}
}

// HTTP rules for a tcp:// route could never apply (its HTTP requests are
// refused, its tunnels have no path): such a policy is not put in force.
func TestHTTPRoutesOnTCPRouteRefused(t *testing.T) {
	s, err := New(Config{Options: Options{Routes: Routes{"web": "127.0.0.1:1", "db": "tcp://127.0.0.1:2"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bad, err := authz.Parse(authz.Spec{HTTPRoutes: map[string][]authz.HTTPRoute{"db": {{Path: "/", Allow: []string{authz.Deny}}}}})
	if err != nil {
		t.Fatal(err)
	}
	before := s.Authorization()
	if err := s.SetAuthorization(bad); err == nil || !strings.Contains(err.Error(), `route "db": a tcp:// route carries no HTTP requests`) {
		t.Fatalf("SetAuthorization with HTTP rules on a tcp:// route: %v", err)
	}
	if s.Authorization() != before {
		t.Fatal("a refused policy replaced the one in force")
	}
	good, err := authz.Parse(authz.Spec{HTTPRoutes: map[string][]authz.HTTPRoute{"web": {{Path: "/", Allow: []string{authz.Deny}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAuthorization(good); err != nil {
		t.Fatalf("HTTP rules on an HTTP route: %v", err)
	}
}
