package inbound

import (
	"net"
	"net/netip"
	"strconv"
)

// Destination ports: a peer on the transparent path names the port its
// app dialled (tunnel.ExtDestPort on a tunnel, httpx.HeaderDestPort on a
// request), and the request or tunnel goes to the local app on that port
// rather than to the route for its service.
//
// The port comes from a remote caller, so it is checked against what this
// sidecar's configuration declares: the endpoint's ports (Options.AppPorts)
// and the ports of its routes' addresses. Anything else is refused: a peer
// must not turn the inbound side into a proxy to arbitrary local ports
// (an admin port, a database bound to loopback only).

// destPorts delivers by destination port.
type destPorts struct {
	host    string // where the apps listen (Options.AppHost)
	allowed map[uint16]bool
	// names maps a route's port to the route's name, so a delivery by
	// port is authorized under that route's policy: naming the port must
	// not be a way around the rule for the route that owns it.
	names map[uint16]string
}

func newDestPorts(o Options, routes routeTable) destPorts {
	d := destPorts{host: o.AppHost, allowed: map[uint16]bool{}, names: map[uint16]string{}}
	if d.host == "" {
		d.host = "127.0.0.1"
	}
	for _, p := range o.AppPorts {
		if p != 0 {
			d.allowed[p] = true
		}
	}
	for _, rt := range routes {
		if _, port, err := net.SplitHostPort(rt.addr); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil && n != 0 {
				d.allowed[uint16(n)] = true
				// Two routes on one port (different hosts): the first
				// name in order, so the choice does not vary by run.
				if cur, ok := d.names[uint16(n)]; !ok || rt.name < cur {
					d.names[uint16(n)] = rt.name
				}
			}
		}
	}
	return d
}

// route returns the route to the app on port, ok false if the port is
// not one a peer may name. The route is named after the route that owns
// the port, else after fallback (the route of the caller's target, if
// any), so the authorization rule for it applies; a port no route
// owns, called for a target without a route, is judged by the default.
func (d destPorts) route(port uint16, fallback string) (route, bool) {
	if !d.allowed[port] {
		return route{}, false
	}
	name, ok := d.names[port]
	if !ok {
		name = fallback
	}
	return route{name: name, proto: ProtoAuto, addr: net.JoinHostPort(d.host, strconv.Itoa(int(port)))}, true
}

// destPortOf returns the destination port a tunnel stream's header
// carried; streams of transports without one have none.
func destPortOf(str TunnelStream) (uint16, bool) {
	if d, ok := str.(interface{ DestPort() (uint16, bool) }); ok {
		return d.DestPort()
	}
	return 0, false
}

// parseDestPort reads a request's destination port field; a value that
// is not a port is reported as bad.
func parseDestPort(v string) (port uint16, bad bool) {
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return 0, true
	}
	return uint16(n), false
}

// validAppHost reports whether h is an IP address (AppHost).
func validAppHost(h string) bool {
	_, err := netip.ParseAddr(h)
	return h == "" || err == nil
}
