package inbound

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// policy is the authorization policy in force, shared by both chains. A
// reload swaps the pointer: a request or tunnel is judged by the policy
// loaded when it reached its (policy) layer, so the new one applies to
// what starts after the swap and nothing in flight is cut off.
type policy struct {
	cur     atomic.Pointer[authz.Policy]
	routes  routeTable
	metrics *telemetry.Metrics
	log     *slog.Logger
	// denials rate-limits the deny log: a refused caller can repeat at
	// the rate of its traffic. One line per route, caller and reason per
	// interval, with the count suppressed.
	denials *lograte.Limiter
}

func newPolicy(cfg Config, routes routeTable) (*policy, error) {
	p := &policy{routes: routes, metrics: cfg.Metrics, log: cfg.Logger, denials: lograte.New(0, 0, nil)}
	initial := cfg.Authorization
	if initial == nil {
		initial = authz.Default()
	}
	if err := p.set(initial); err != nil {
		return nil, err
	}
	return p, nil
}

// set puts p in force after checking that every route it names is one of
// ours: a rule for a route we do not serve is a typo that would leave the
// meant route on the default rule.
func (p *policy) set(pol *authz.Policy) error {
	if pol == nil {
		return fmt.Errorf("authorization: no policy")
	}
	for _, name := range pol.Routes() {
		if _, ok := p.routes[name]; !ok {
			return fmt.Errorf("authorization for route %q: no such inbound route", name)
		}
	}
	for _, name := range pol.HTTPRoutes() {
		if p.routes[name].proto == ProtoTCP {
			// Its requests are refused and its tunnels have no path:
			// the rules could never apply.
			return fmt.Errorf("authorization http_routes for route %q: a tcp:// route carries no HTTP requests", name)
		}
	}
	p.cur.Store(pol)
	return nil
}

// decide judges one tunnel to rt from peer, counts the decision and
// logs a denial.
func (p *policy) decide(rt route, peer identity.ID, proto string) authz.Decision {
	return p.record(rt, peer, proto, p.cur.Load().Decide(rt.name, peer))
}

// decideHTTP judges one HTTP request or gRPC call to rt from peer, by
// the route's HTTP rules for its method and path if it has any.
func (p *policy) decideHTTP(rt route, peer identity.ID, proto string, r *http.Request) authz.Decision {
	return p.record(rt, peer, proto, p.cur.Load().DecideHTTP(rt.name, r.Method, r.URL.Path, r.URL.RawPath, peer))
}

// record counts decision d and logs it if it is a denial.
func (p *policy) record(rt route, peer identity.ID, proto string, d authz.Decision) authz.Decision {
	p.metrics.AuthzDecision(rt.name, proto, d.Allow, d.Reason)
	if !d.Allow {
		caller := callerName(peer)
		rule := "route"
		switch {
		case d.HTTPRoute != "":
			rule = "http_route " + d.HTTPRoute
		case d.Reason == authz.ReasonPathNotCanonical:
			rule = "path check"
		case d.Rule == "":
			rule = "default"
		}
		p.denials.Log(p.log, slog.LevelInfo, rt.name+" "+caller+" "+d.Reason, "authorization denied",
			"route", rt.name, "proto", proto, "caller", caller, "reason", d.Reason, "rule", rule)
	}
	return d
}

// callerName is how logs and refusals name a caller.
func callerName(peer identity.ID) string {
	if peer.IsZero() {
		return "a caller with no identity"
	}
	return peer.String()
}

// denial is what a refused caller is told: who it is as we saw it, the
// route and the reason, so that a misconfiguration is found from the
// client side without the server's logs.
func denial(rt route, peer identity.ID, d authz.Decision) string {
	if d.HTTPRoute != "" {
		return fmt.Sprintf("%s is not authorized for route %q, HTTP rule %q (%s)", callerName(peer), rt.name, d.HTTPRoute, d.Reason)
	}
	return fmt.Sprintf("%s is not authorized for route %q (%s)", callerName(peer), rt.name, d.Reason)
}

// authorize is the HTTP chain's (policy) layer: a request the route's
// policy does not allow gets 403 (gRPC: PERMISSION_DENIED) and reaches
// no app.
type authorize struct {
	next   httpLayer
	policy *policy
}

func (l authorize) serveHTTP(c *httpCall) (bridge.Result, error) {
	proto := "http"
	if bridge.IsGRPC(c.r) {
		proto = "grpc"
	}
	if d := l.policy.decideHTTP(c.route, c.peer, proto, c.r); !d.Allow {
		return bridge.Result{}, fail(bridge.Forbidden, "%s", denial(c.route, c.peer, d))
	}
	return l.next.serveHTTP(c)
}

// authorizeTunnel is the tunnel chain's (policy) layer: a tunnel the
// route's policy does not allow is reset with meshcode.Forbidden before
// the app is connected to, so the app never sees a connection.
type authorizeTunnel struct {
	next   tunnelLayer
	policy *policy
}

func (l authorizeTunnel) serveTunnel(t *tunnelCall) error {
	if d := l.policy.decide(t.route, t.peer, "tcp"); !d.Allow {
		return &tunnelFailure{code: meshcode.Forbidden, reason: denial(t.route, t.peer, d)}
	}
	return l.next.serveTunnel(t)
}
