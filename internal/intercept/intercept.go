// Package intercept writes the iptables nat rules that send a pod's TCP
// through its sidecar, as Linkerd's proxy-init and Istio's istio-init do:
// run once as root inside the pod's network namespace before the app
// starts (`quicmesh init`).
//
// Two chains of the nat table belong to quicmesh, and one jump to each:
//
//	OUTPUT     -p tcp -j QUICMESH_OUTPUT      (the pod's outgoing connections)
//	PREROUTING -p tcp -j QUICMESH_PREROUTING  (connections arriving at the pod)
//
// QUICMESH_OUTPUT returns (leaves alone) the sidecar's own connections,
// matched by its UID, so the sidecar never loops into itself; anything
// leaving through lo (127.0.0.0/8, ::1 and the pod's own addresses); and
// the user's skipped ports and CIDRs. Everything else is redirected to the
// sidecar's transparent outbound port. QUICMESH_PREROUTING returns the
// admin port, the mesh port and the user's skipped ports, and redirects the
// rest to the inbound TCP port. Only TCP enters either chain: UDP, and so
// QUIC on the mesh port, is never redirected.
//
// Apply is idempotent: it creates the chains or flushes and refills them,
// and inserts each jump (first in its chain, so earlier rules cannot route
// around the sidecar) only when it is missing. Undo deletes the jumps and
// the chains and nothing else; it needs no configuration. IPv4 and IPv6 are
// separate rule sets (iptables and ip6tables) of the same shape.
//
// The rules are written through github.com/coreos/go-iptables, which runs
// the iptables binary (legacy or nf_tables backend alike) with the xtables
// lock and reports a missing rule or chain as a typed error; the same
// operations print as iptables commands for --dry-run.
package intercept

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Table is the iptables table the rules live in.
const Table = "nat"

// The chains quicmesh owns.
const (
	OutputChain     = "QUICMESH_OUTPUT"
	PreroutingChain = "QUICMESH_PREROUTING"
)

// Default ports, matching the sidecar's listeners.
const (
	DefaultOutboundPort = 4145
	DefaultInboundPort  = 4146
	DefaultAdminPort    = 4191
	DefaultMeshPort     = 4143
)

// Family is an IP version; each has its own iptables binary and rules.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string { return "IPv" + strconv.Itoa(int(f)) }

// Command is the iptables binary of the family.
func (f Family) Command() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// PortRange is an inclusive range of TCP ports; a single port has
// First == Last.
type PortRange struct{ First, Last uint16 }

// String is the range as iptables' --dport takes it.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d:%d", r.First, r.Last)
}

// Config says where redirected traffic goes and what stays untouched.
type Config struct {
	// ProxyUID is the UID the sidecar runs as; its connections are never
	// redirected. It must not be 0: every root process would bypass the
	// sidecar.
	ProxyUID uint32
	// OutboundPort is the sidecar's transparent outbound TCP listener.
	OutboundPort uint16
	// InboundPort is the sidecar's inbound TCP listener for connections
	// from outside the pod.
	InboundPort uint16
	// AdminPort (TCP) is reached directly from outside (health checks,
	// metrics scrapes).
	AdminPort uint16
	// MeshPort is the sidecar's QUIC (UDP) port. UDP is never redirected;
	// TCP arriving on this port is left for the sidecar too.
	MeshPort uint16

	SkipOutboundPorts []PortRange    // destination ports the app reaches directly
	SkipInboundPorts  []PortRange    // pod ports reached directly from outside
	SkipOutboundCIDRs []netip.Prefix // destinations the app reaches directly
}

// Validate reports the first setting that cannot work, naming it as the
// command line does.
func (c Config) Validate() error {
	if c.ProxyUID == 0 {
		return errors.New("--proxy-uid 0: the sidecar must not run as root, or every root process in the pod would bypass it")
	}
	ports := []struct {
		name string
		port uint16
	}{{"outbound-port", c.OutboundPort}, {"inbound-port", c.InboundPort}, {"admin-port", c.AdminPort}, {"mesh-port", c.MeshPort}}
	for i, p := range ports {
		if p.port == 0 {
			return fmt.Errorf("--%s: must be a port from 1 to 65535", p.name)
		}
		for _, q := range ports[:i] {
			if q.port == p.port {
				return fmt.Errorf("--%s and --%s are both %d: each needs its own port", q.name, p.name, p.port)
			}
		}
	}
	for _, l := range []struct {
		name string
		rs   []PortRange
	}{{"skip-outbound-ports", c.SkipOutboundPorts}, {"skip-inbound-ports", c.SkipInboundPorts}} {
		for _, r := range l.rs {
			if r.First == 0 || r.Last < r.First {
				return fmt.Errorf("--%s: bad range %d-%d", l.name, r.First, r.Last)
			}
		}
	}
	for _, p := range c.SkipOutboundCIDRs {
		if !p.IsValid() {
			return errors.New("--skip-outbound-cidrs: invalid prefix")
		}
	}
	return nil
}

// ParsePorts parses a comma-separated list of ports and ranges, such as
// "25,8000-8100"; "" is an empty list.
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range splitList(s) {
		lo, hi, isRange := strings.Cut(f, "-")
		first, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		last := first
		if isRange {
			if last, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("%q: %w", f, err)
			}
			if last < first {
				return nil, fmt.Errorf("%q: range ends before it starts", f)
			}
		}
		out = append(out, PortRange{first, last})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, errors.New("want a port from 1 to 65535 or a range such as 8000-8100")
	}
	return uint16(n), nil
}

// ParseCIDRs parses a comma-separated list of IPv4 and IPv6 prefixes; a
// bare address is a single-address prefix.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q: want a CIDR such as 10.0.0.0/8 or fd00::/8", f)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%q: host bits set (did you mean %s?)", f, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
