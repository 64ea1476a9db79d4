package outbound

import (
	"errors"
	"net"
	"net/http"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
)

// target is where a unit of work goes: the service whose endpoints carry
// it, and the authority (or tunnel target) the peer is asked for.
type target struct {
	service, authority string
	// port, when not 0, is the port the app originally dialled, on the
	// transparent path: the far sidecar delivers to its app on it
	// (tunnel.ExtDestPort, httpx.HeaderDestPort).
	port uint16
	// pinned, when set, is the one endpoint to use (the app dialled its
	// pod IP) instead of balancing over service's.
	pinned *discovery.Endpoint
	// policy is the service's request policy, set by the breaker stage.
	policy *servicePolicy
	// avoid are balancer keys of endpoints that already failed this
	// request: a retry goes elsewhere while anything else is left.
	avoid []string
}

// router finds a request's target and hands the request to the path for
// its kind: CONNECT and HTTP/1.1 upgrades become tunnels, the rest are
// forwarded request by request. bound is the listener's service, or ""
// on the HTTP proxy listener where each request names its service by
// authority.
type router struct {
	bound    string
	who      string // names this proxy in its error responses
	requests stage
	connect  routed // the tunnel path for CONNECT
	upgrade  routed // the tunnel path for upgrades
}

// routed serves a request whose target is known.
type routed func(w http.ResponseWriter, r *http.Request, t target)

func (rt router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t, err := rt.route(r)
	if err != nil {
		httpx.WriteValidationError(w, err)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		if r.ProtoMajor != 1 {
			bridge.WriteError(w, r, bridge.BadGateway, rt.who, "CONNECT over HTTP/2 is not supported; use HTTP/1.1")
			return
		}
		rt.connect(w, r, t)
	case isUpgrade(r):
		rt.upgrade(w, r, t.tunnelToService())
	default:
		rt.requests.serve(w, r, t)
	}
}

// route finds the service and authority of a request. On a bound listener
// the service is fixed; on the HTTP proxy listener it comes from the
// absolute-form URI, the CONNECT target or the Host header.
func (rt router) route(r *http.Request) (target, error) {
	authority := r.Host
	if r.URL.IsAbs() && r.URL.Host != "" {
		authority = r.URL.Host
	}
	if t, ok := transparentTarget(r.Context()); ok {
		t.authority = authority
		if t.authority == "" {
			t.authority = t.service
		}
		return t, nil
	}
	if rt.bound != "" {
		return target{service: rt.bound, authority: authority}, nil
	}
	if authority == "" {
		return target{}, httpx.BadRequest("no authority: cannot route the request")
	}
	host := authority
	if h, _, err := net.SplitHostPort(authority); err == nil {
		host = h
	}
	return target{service: host, authority: authority}, nil
}

// tunnelToService is the target of an upgrade: the far app is reached as
// the service itself, the request is replayed in the tunnel.
func (t target) tunnelToService() target {
	t.authority, t.avoid = t.service, nil
	return t
}

func isUpgrade(r *http.Request) bool {
	return r.ProtoMajor == 1 && httpx.UpgradeType(r.Header) != ""
}

// unknownServiceHint is the text of a proxy error for a request that
// found no endpoint. On the HTTP proxy listener (bound "") the service
// name is the request's host, which an unknown service had better say.
func unknownServiceHint(bound string, err error) string {
	if bound == "" && errors.Is(err, discovery.ErrUnknownService) {
		return err.Error() + " (the HTTP proxy takes the service name from the request's host)"
	}
	return err.Error()
}
