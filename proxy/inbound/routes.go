package inbound

import (
	"fmt"
	"net"
	"strings"
)

// Routes maps a tunnel target or request authority (service name, or
// name:port) to the local app that serves it, in the route syntax:
// "tcp://ADDR", "http://ADDR", "h2c://ADDR", or a bare ADDR (detect).
type Routes map[string]string

// App protocols a route can name with a scheme prefix on its address.
const (
	ProtoAuto = ""     // HTTP/1.1, or h2c when the caller spoke HTTP/2
	ProtoHTTP = "http" // HTTP/1.1 only
	ProtoH2C  = "h2c"  // HTTP/2 with prior knowledge
	ProtoTCP  = "tcp"  // opaque only: HTTP requests are refused
)

// ParseAppAddr splits a route value such as "h2c://127.0.0.1:7000" into
// protocol and address; a bare address means ProtoAuto.
func ParseAppAddr(v string) (proto, addr string, err error) {
	if scheme, rest, ok := strings.Cut(v, "://"); ok {
		switch scheme {
		case ProtoHTTP, ProtoH2C, ProtoTCP:
			proto, v = scheme, rest
		default:
			return "", "", fmt.Errorf("route %q: unknown app protocol %q (want http, h2c or tcp)", v, scheme)
		}
	}
	if _, _, err := net.SplitHostPort(v); err != nil {
		return "", "", fmt.Errorf("route %q: app address: %w", v, err)
	}
	return proto, v, nil
}

// route is where one target's traffic goes. Who may call it is the
// authorization policy's rule for its name (policy.go).
type route struct {
	name  string // its key in Routes: what the policy and metrics call it
	proto string // ProtoAuto, ProtoHTTP, ProtoH2C or ProtoTCP
	addr  string
}

// routeTable is Routes parsed once, when the server is built: a request
// only looks its target up.
type routeTable map[string]route

func parseRoutes(r Routes) (routeTable, error) {
	t := make(routeTable, len(r))
	for target, v := range r {
		proto, addr, err := ParseAppAddr(v)
		if err != nil {
			return nil, fmt.Errorf("route for %q: %w", target, err)
		}
		t[target] = route{name: target, proto: proto, addr: addr}
	}
	return t, nil
}

// lookup finds the route for target: an exact match first, then the
// name without its port.
func (t routeTable) lookup(target string) (route, bool) {
	if r, ok := t[target]; ok {
		return r, true
	}
	if name, _, ok := strings.Cut(target, ":"); ok {
		r, ok := t[name]
		return r, ok
	}
	return route{}, false
}
