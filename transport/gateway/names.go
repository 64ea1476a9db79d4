package gateway

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	"github.com/quicmesh/quicmesh/discovery"
)

// Suffix is the reserved DNS suffix of every server name a gateway
// routes by. Under .invalid (RFC 6761) it can never be a real host name,
// so a gateway name is never confused with one and never resolved.
const Suffix = "gw.quicmesh.invalid"

// anyLabel is the first label of a service's server name: the gateway
// picks one of the service's ready endpoints for each new connection.
const anyLabel = "any"

// endpointPrefix starts the first label of one endpoint's server name.
const endpointPrefix = "e-"

// maxName is the longest host name DNS (and so SNI) allows.
const maxName = 253

var labelEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// EndpointLabel names one endpoint in server names: "e-" and 12 base32
// characters (60 bits) of a hash of its key (address and identity).
// Stable for as long as the endpoint exists, DNS-safe, and it does not
// spell out the endpoint's address (though it is no secret: it can be
// matched against guessed addresses).
func EndpointLabel(ep discovery.Endpoint) string {
	sum := sha256.Sum256([]byte(ep.Key()))
	return endpointPrefix + strings.ToLower(labelEncoding.EncodeToString(sum[:])[:12])
}

// ServiceName is the server name that reaches service through a gateway,
// which picks one of its ready endpoints per connection:
// any.<service>.gw.quicmesh.invalid.
func ServiceName(service string) (string, error) {
	return join(anyLabel, service)
}

// EndpointName is the server name that reaches one endpoint through a
// gateway: <EndpointLabel>.gw.quicmesh.invalid. An importing cluster
// that lists each endpoint under its own name balances requests over
// them itself, as it does locally. The name does not say which service:
// the gateway could not hold a connection to one service anyway (the
// requests in it are encrypted), so a caller keeps one connection per
// destination sidecar whatever it calls there, as it does in-cluster, and
// which services it may call is the destination sidecar's authorization
// policy's to decide.
func EndpointName(ep discovery.Endpoint) string {
	return EndpointLabel(ep) + "." + Suffix
}

// ServiceName's first label.
func join(first, service string) (string, error) {
	if service == "" {
		return "", errors.New("gateway: empty service name")
	}
	name := first + "." + service + "." + Suffix
	if len(name) > maxName {
		return "", fmt.Errorf("gateway: service %q is too long to export: its server name would be %d bytes (max %d)", service, len(name), maxName)
	}
	return name, nil
}

// ErrNotGatewayName means a server name is not under Suffix or not of
// the form ServiceName or EndpointName make.
var ErrNotGatewayName = errors.New("gateway: not a gateway server name")

// ParseName reads a server name made by ServiceName (the service, and
// endpoint "") or EndpointName (the endpoint label, and service "").
// Upper case is folded: DNS names are case-insensitive.
func ParseName(name string) (service, endpoint string, err error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	rest, ok := strings.CutSuffix(name, "."+Suffix)
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not under %s", ErrNotGatewayName, name, Suffix)
	}
	first, service, _ := strings.Cut(rest, ".")
	switch {
	case first == anyLabel && service != "":
		return service, "", nil
	case service == "" && strings.HasPrefix(first, endpointPrefix) && len(first) == len(endpointPrefix)+12:
		return "", first, nil
	}
	return "", "", fmt.Errorf("%w: %q is neither %s.<service>.%s nor an endpoint's name", ErrNotGatewayName, name, anyLabel, Suffix)
}

// Imports returns how another cluster reaches an exported service's
// endpoints eps through a gateway at advertise (the address the other
// cluster can reach): one endpoint per ready endpoint of eps, at
// advertise with its EndpointName and its own identity, weight and
// zone. This is the service's entry in the importing cluster's
// discovery (its static file, say).
func Imports(eps []discovery.Endpoint, advertise string) []discovery.Endpoint {
	var out []discovery.Endpoint
	for _, ep := range discovery.Ready(eps) {
		out = append(out, discovery.Endpoint{Addr: advertise, ServerName: EndpointName(ep), Identity: ep.Identity, Weight: ep.Weight, Zone: ep.Zone})
	}
	return out
}
