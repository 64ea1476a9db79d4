package static

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/quicmesh/quicmesh/discovery"
)

// MaxFileSize is the largest endpoints file Parse (and therefore New and a
// reload) accepts, in bytes.
const MaxFileSize = 16 << 20

// ParseError describes why an endpoints file was rejected. Its message
// names the service and endpoint index when the problem lies inside one,
// and ends with the JSON path and byte offset of the offending value.
type ParseError struct {
	// Service is the service the problem was found in; empty if the
	// problem is outside any service (or the name itself is empty, in
	// which case Path still points at it).
	Service string
	// Endpoint is the index of the endpoint within Service, or -1.
	Endpoint int
	// Path is a JSON path to the offending value, such as
	// `$.services["echo"].endpoints[0].addr`; empty if not applicable.
	Path string
	// Offset is the byte offset in the input at or just before the
	// offending value, or -1 if unknown.
	Offset int64
	// Msg says what is wrong.
	Msg string

	inService bool
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.inService {
		fmt.Fprintf(&b, "service %q: ", e.Service)
		if e.Endpoint >= 0 {
			fmt.Fprintf(&b, "endpoint %d: ", e.Endpoint)
		}
	}
	b.WriteString(e.Msg)
	switch {
	case e.Path != "" && e.Offset >= 0:
		fmt.Fprintf(&b, " (at %s, offset %d)", e.Path, e.Offset)
	case e.Path != "":
		fmt.Fprintf(&b, " (at %s)", e.Path)
	case e.Offset >= 0:
		fmt.Fprintf(&b, " (at offset %d)", e.Offset)
	}
	return b.String()
}

// loc is where the parser currently is.
type loc struct {
	path      string
	service   string
	inService bool
	endpoint  int
}

func (l loc) field(name string) loc {
	l.path += "." + name
	return l
}

func (l loc) withService(name string) loc {
	l.path += fmt.Sprintf("[%q]", name)
	l.service = name
	l.inService = true
	return l
}

func (l loc) withEndpoint(i int) loc {
	l.path += fmt.Sprintf("[%d]", i)
	l.endpoint = i
	return l
}

func (l loc) withKey(k string) loc {
	l.path += fmt.Sprintf("[%q]", k)
	return l
}

type parser struct {
	dec *json.Decoder

	// Addresses claimed so far, for the checks across services.
	vips   map[netip.AddrPort]string // virtual IP:port -> service
	vipIPs map[netip.Addr]string     // virtual IP -> first service
	pods   map[netip.Addr]podClaim   // pod IP -> first endpoint
}

// podClaim is the first endpoint found with a pod IP.
type podClaim struct {
	service string
	index   int
	key     string // Endpoint.Key
}

func (p *parser) errAt(l loc, off int64, format string, args ...any) *ParseError {
	return &ParseError{
		Service:   l.service,
		Endpoint:  l.endpoint,
		Path:      l.path,
		Offset:    off,
		Msg:       fmt.Sprintf(format, args...),
		inService: l.inService,
	}
}

// token reads the next token, turning decoder failures into ParseErrors.
func (p *parser) token(l loc) (json.Token, error) {
	off := p.dec.InputOffset()
	tok, err := p.dec.Token()
	if err == nil {
		return tok, nil
	}
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return nil, p.errAt(l, se.Offset, "invalid JSON: %v", se)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, p.errAt(l, p.dec.InputOffset(), "invalid JSON: unexpected end of input")
	default:
		return nil, p.errAt(l, off, "invalid JSON: %v", err)
	}
}

// atEOF reports whether only white space is left.
func (p *parser) atEOF() bool {
	_, err := p.dec.Token()
	return err == io.EOF
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		switch v {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return fmt.Sprintf("%q", string(v))
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	}
	return fmt.Sprintf("%T", tok)
}

// object reads a JSON object at l, calling fn for each member with the key
// and the offset just after it. fn must consume the member's value.
// Duplicate keys are rejected; dupWhat names what a key is ("field",
// "service", "metadata key").
func (p *parser) object(l loc, what, dupWhat string, fn func(key string, keyOff int64) error) error {
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return p.errAt(l, off, "%s must be a JSON object, got %s", what, describe(tok))
	}
	seen := make(map[string]bool)
	for p.dec.More() {
		tok, err := p.token(l)
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok { // cannot happen with encoding/json, which rejects non-string keys
			return p.errAt(l, p.dec.InputOffset(), "%s has a non-string key", what)
		}
		off := p.dec.InputOffset()
		if seen[key] {
			return p.errAt(l.withKey(key), off, "duplicate %s %q", dupWhat, key)
		}
		seen[key] = true
		if err := fn(key, off); err != nil {
			return err
		}
	}
	_, err = p.token(l) // the closing '}'
	return err
}

func (p *parser) array(l loc, what string, fn func(i int) error) error {
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return p.errAt(l, off, "%s must be a JSON array, got %s", what, describe(tok))
	}
	for i := 0; p.dec.More(); i++ {
		if err := fn(i); err != nil {
			return err
		}
	}
	_, err = p.token(l) // the closing ']'
	return err
}

func (p *parser) str(l loc, what string) (string, error) {
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", p.errAt(l, off, "%s must be a string, got %s", what, describe(tok))
	}
	return s, nil
}

func (p *parser) uint32(l loc, what string) (uint32, error) {
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return 0, err
	}
	n, ok := tok.(json.Number)
	if !ok {
		return 0, p.errAt(l, off, "%s must be an integer in 0-4294967295, got %s", what, describe(tok))
	}
	v, err := strconv.ParseUint(string(n), 10, 32)
	if err != nil {
		return 0, p.errAt(l, off, "%s must be an integer in 0-4294967295, got %s", what, n)
	}
	return uint32(v), nil
}

func (p *parser) port(l loc, what string, allowZero bool) (uint16, error) {
	lo := 1
	if allowZero {
		lo = 0
	}
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return 0, err
	}
	n, ok := tok.(json.Number)
	if !ok {
		return 0, p.errAt(l, off, "%s must be an integer in %d-65535, got %s", what, lo, describe(tok))
	}
	v, err := strconv.ParseUint(string(n), 10, 16)
	if err != nil || (v == 0 && !allowZero) {
		return 0, p.errAt(l, off, "%s must be an integer in %d-65535, got %s", what, lo, n)
	}
	return uint16(v), nil
}

func (p *parser) boolean(l loc, what string) (bool, error) {
	off := p.dec.InputOffset()
	tok, err := p.token(l)
	if err != nil {
		return false, err
	}
	b, ok := tok.(bool)
	if !ok {
		return false, p.errAt(l, off, "%s must be true or false, got %s", what, describe(tok))
	}
	return b, nil
}

// ip reads an IP address: not a host name, without a zone, not
// unspecified. An IPv4-mapped IPv6 address becomes its IPv4 form, which is
// what the original destination of an IPv4 connection is.
func (p *parser) ip(l loc, what string) (netip.Addr, int64, error) {
	off := p.dec.InputOffset()
	s, err := p.str(l, what)
	if err != nil {
		return netip.Addr{}, off, err
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, off, p.errAt(l, off, "invalid %s %q: not an IP address", what, s)
	case a.Zone() != "":
		return netip.Addr{}, off, p.errAt(l, off, "invalid %s %q: must not have a zone", what, s)
	case a.IsUnspecified():
		return netip.Addr{}, off, p.errAt(l, off, "invalid %s %q: must not be unspecified", what, s)
	}
	return a.Unmap(), off, nil
}

// ParseServices decodes and validates an endpoints file (see the package
// comment for the format) and returns each service, by name, with its
// virtual IPs, ports and endpoints. Decoding is strict: unknown fields,
// duplicate keys, wrong types and trailing data are errors, and so is an
// address claimed twice (a virtual IP:port by two services, a pod IP by
// two different endpoints, one IP as both). Weights of 0 or absent become
// 1; an absent "ready" means ready. Errors are *ParseError values.
func ParseServices(data []byte) (map[string]discovery.Service, error) {
	root := loc{path: "$", endpoint: -1}
	if len(data) > MaxFileSize {
		return nil, &ParseError{Endpoint: -1, Offset: -1,
			Msg: fmt.Sprintf("input is %d bytes, exceeds maximum size of %d bytes", len(data), MaxFileSize)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &ParseError{Endpoint: -1, Offset: -1, Msg: "empty input: expected a JSON object"}
	}
	p := &parser{
		dec:    json.NewDecoder(bytes.NewReader(data)),
		vips:   map[netip.AddrPort]string{},
		vipIPs: map[netip.Addr]string{},
		pods:   map[netip.Addr]podClaim{},
	}
	p.dec.UseNumber()

	out := make(map[string]discovery.Service)
	err := p.object(root, "the top level", "field", func(key string, off int64) error {
		switch key {
		case "services":
			return p.services(root.field("services"), out)
		default:
			return p.errAt(root.field(key), off, "unknown field %q", key)
		}
	})
	if err != nil {
		return nil, err
	}
	if off := p.dec.InputOffset(); !p.atEOF() {
		return nil, p.errAt(root, off, "unexpected data after the top-level object")
	}
	return out, nil
}

// Parse is ParseServices reduced to the endpoints of each service, for
// callers that need no addresses.
func Parse(data []byte) (map[string][]discovery.Endpoint, error) {
	svcs, err := ParseServices(data)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]discovery.Endpoint, len(svcs))
	for name, svc := range svcs {
		out[name] = svc.Endpoints
	}
	return out, nil
}

func (p *parser) services(l loc, out map[string]discovery.Service) error {
	return p.object(l, "services", "service", func(name string, nameOff int64) error {
		sl := l.withService(name)
		if err := validateServiceName(name); err != nil {
			return p.errAt(sl, nameOff, "invalid service name: %v", err)
		}
		svc := discovery.Service{Name: name, Endpoints: []discovery.Endpoint{}}
		var vipOffs []int64
		var vipsOff int64
		err := p.object(sl, "a service", "field", func(key string, off int64) error {
			var err error
			switch key {
			case "endpoints":
				svc.Endpoints, err = p.endpoints(sl.field("endpoints"))
			case "virtual_ips":
				vipsOff = off
				svc.VirtualIPs, vipOffs, err = p.virtualIPs(sl.field("virtual_ips"))
			case "ports":
				svc.Ports, err = p.servicePorts(sl.field("ports"))
			default:
				err = p.errAt(sl.field(key), off, "unknown field %q", key)
			}
			return err
		})
		if err != nil {
			return err
		}
		if len(svc.VirtualIPs) > 0 && len(svc.Ports) == 0 {
			return p.errAt(sl.field("virtual_ips"), vipsOff, "virtual_ips needs ports: a virtual IP is reached at a service port")
		}
		if err := p.claimVirtualIPs(sl, svc, vipOffs); err != nil {
			return err
		}
		out[name] = svc
		return nil
	})
}

func (p *parser) virtualIPs(l loc) ([]netip.Addr, []int64, error) {
	var ips []netip.Addr
	var offs []int64
	err := p.array(l, "virtual_ips", func(i int) error {
		il := l
		il.path += fmt.Sprintf("[%d]", i)
		a, off, err := p.ip(il, "virtual IP")
		if err != nil {
			return err
		}
		if slices.Contains(ips, a) {
			return p.errAt(il, off, "duplicate virtual IP %s", a)
		}
		ips, offs = append(ips, a), append(offs, off)
		return nil
	})
	return ips, offs, err
}

// claimVirtualIPs records svc's virtual addresses, refusing one that
// another service or a pod already has.
func (p *parser) claimVirtualIPs(l loc, svc discovery.Service, offs []int64) error {
	for i, ip := range svc.VirtualIPs {
		il := l.field("virtual_ips")
		il.path += fmt.Sprintf("[%d]", i)
		if pod, ok := p.pods[ip]; ok {
			return p.errAt(il, offs[i], "virtual IP %s is the pod_ip of service %q endpoint %d", ip, pod.service, pod.index)
		}
		for _, port := range svc.Ports {
			ap := netip.AddrPortFrom(ip, port.Port)
			if other, ok := p.vips[ap]; ok {
				return p.errAt(il, offs[i], "virtual address %s is also service %q's", ap, other)
			}
			p.vips[ap] = svc.Name
		}
		if _, ok := p.vipIPs[ip]; !ok {
			p.vipIPs[ip] = svc.Name
		}
	}
	return nil
}

func (p *parser) servicePorts(l loc) ([]discovery.ServicePort, error) {
	var ports []discovery.ServicePort
	err := p.array(l, "ports", func(i int) error {
		pl := l
		pl.path += fmt.Sprintf("[%d]", i)
		start := p.dec.InputOffset()
		var sp discovery.ServicePort
		havePort := false
		err := p.object(pl, "a service port", "field", func(key string, off int64) error {
			fl := pl.field(key)
			var err error
			switch key {
			case "name":
				sp.Name, err = p.str(fl, "name")
			case "port":
				havePort = true
				sp.Port, err = p.port(fl, "port", false)
			case "target_port":
				sp.TargetPort, err = p.port(fl, "target_port", true)
			default:
				err = p.errAt(fl, off, "unknown field %q", key)
			}
			return err
		})
		if err != nil {
			return err
		}
		if !havePort {
			return p.errAt(pl, start, "port is required")
		}
		for j, o := range ports {
			if o.Port == sp.Port {
				return p.errAt(pl.field("port"), start, "duplicate port %d: same as ports[%d]", sp.Port, j)
			}
			if sp.Name != "" && o.Name == sp.Name {
				return p.errAt(pl.field("name"), start, "duplicate port name %q: same as ports[%d]", sp.Name, j)
			}
		}
		ports = append(ports, sp)
		return nil
	})
	return ports, err
}

func (p *parser) endpoints(l loc) ([]discovery.Endpoint, error) {
	eps := []discovery.Endpoint{}
	first := make(map[string]int) // Key -> index of first occurrence
	err := p.array(l, "endpoints", func(i int) error {
		el := l.withEndpoint(i)
		start := p.dec.InputOffset()
		ep, podOff, err := p.endpoint(el)
		if err != nil {
			return err
		}
		if j, dup := first[ep.Key()]; dup {
			return p.errAt(el, start, "duplicate endpoint: same addr %q and identity %q as endpoint %d", ep.Addr, ep.Identity, j)
		}
		first[ep.Key()] = i
		if err := p.claimPodIP(el, ep, podOff); err != nil {
			return err
		}
		eps = append(eps, ep)
		return nil
	})
	return eps, err
}

// claimPodIP records ep's pod IP, refusing one that a different endpoint
// (another addr or identity: another peer) or a virtual IP already has.
// The same peer in several services is fine.
func (p *parser) claimPodIP(l loc, ep discovery.Endpoint, off int64) error {
	if !ep.PodIP.IsValid() {
		return nil
	}
	pl := l.field("pod_ip")
	if svc, ok := p.vipIPs[ep.PodIP]; ok {
		return p.errAt(pl, off, "pod_ip %s is a virtual IP of service %q", ep.PodIP, svc)
	}
	if c, ok := p.pods[ep.PodIP]; ok {
		if c.key != ep.Key() {
			return p.errAt(pl, off, "pod_ip %s is also service %q endpoint %d's, which has another addr or identity", ep.PodIP, c.service, c.index)
		}
		return nil
	}
	p.pods[ep.PodIP] = podClaim{service: l.service, index: l.endpoint, key: ep.Key()}
	return nil
}

// endpoint reads one endpoint; podOff is the offset of its pod_ip.
func (p *parser) endpoint(l loc) (ep discovery.Endpoint, podOff int64, err error) {
	start := p.dec.InputOffset()
	var addrOff, idOff, portsOff, snOff int64
	haveAddr, haveID, haveSN := false, false, false
	err = p.object(l, "an endpoint", "field", func(key string, off int64) error {
		fl := l.field(key)
		var err error
		switch key {
		case "addr":
			haveAddr, addrOff = true, off
			ep.Addr, err = p.str(fl, "addr")
		case "server_name":
			haveSN, snOff = true, off
			ep.ServerName, err = p.str(fl, "server_name")
		case "identity":
			haveID, idOff = true, off
			ep.Identity, err = p.str(fl, "identity")
		case "weight":
			ep.Weight, err = p.uint32(fl, "weight")
		case "zone":
			ep.Zone, err = p.str(fl, "zone")
		case "metadata":
			ep.Metadata, err = p.metadata(fl)
		case "pod_ip":
			ep.PodIP, podOff, err = p.ip(fl, "pod_ip")
		case "ports":
			portsOff = off
			ep.Ports, err = p.endpointPorts(fl)
		case "ready":
			var ready bool
			ready, err = p.boolean(fl, "ready")
			ep.NotReady = !ready
		default:
			err = p.errAt(fl, off, "unknown field %q", key)
		}
		return err
	})
	if err != nil {
		return ep, podOff, err
	}
	if !haveAddr || ep.Addr == "" {
		if !haveAddr {
			return ep, podOff, p.errAt(l, start, "addr is required")
		}
		return ep, podOff, p.errAt(l.field("addr"), addrOff, "addr is required")
	}
	if err := validateAddr(ep.Addr); err != nil {
		return ep, podOff, p.errAt(l.field("addr"), addrOff, "invalid addr %q: %v", ep.Addr, err)
	}
	if haveSN {
		// The name a gateway routes by is sent in the clear as TLS SNI:
		// a lower-case DNS name, as a service name is.
		if err := validateServiceName(ep.ServerName); err != nil {
			return ep, podOff, p.errAt(l.field("server_name"), snOff, "invalid server_name %q: %v", ep.ServerName, err)
		}
	}
	if !haveID || ep.Identity == "" {
		if !haveID {
			return ep, podOff, p.errAt(l, start, "identity is required")
		}
		return ep, podOff, p.errAt(l.field("identity"), idOff, "identity is required")
	}
	if err := validateIdentity(ep.Identity); err != nil {
		return ep, podOff, p.errAt(l.field("identity"), idOff, "invalid identity %q: %v", ep.Identity, err)
	}
	if len(ep.Ports) > 0 && !ep.PodIP.IsValid() {
		return ep, podOff, p.errAt(l.field("ports"), portsOff, "ports needs pod_ip: they are ports of the pod IP")
	}
	if ep.Weight == 0 {
		ep.Weight = 1
	}
	return ep, podOff, nil
}

func (p *parser) endpointPorts(l loc) ([]uint16, error) {
	var ports []uint16
	err := p.array(l, "ports", func(i int) error {
		pl := l
		pl.path += fmt.Sprintf("[%d]", i)
		off := p.dec.InputOffset()
		n, err := p.port(pl, "port", false)
		if err != nil {
			return err
		}
		if slices.Contains(ports, n) {
			return p.errAt(pl, off, "duplicate port %d", n)
		}
		ports = append(ports, n)
		return nil
	})
	return ports, err
}

func (p *parser) metadata(l loc) (map[string]string, error) {
	md := make(map[string]string)
	err := p.object(l, "metadata", "metadata key", func(key string, _ int64) error {
		v, err := p.str(l.withKey(key), "metadata value")
		md[key] = v
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(md) == 0 {
		return nil, nil
	}
	return md, nil
}

// validateServiceName accepts plain lower-case DNS-style names: one or more
// dot-separated labels of a-z, 0-9 and '-', each 1-63 bytes and not
// starting or ending with '-', 253 bytes at most in total. Ports (":80"),
// upper case and anything else are rejected.
func validateServiceName(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 bytes (%d)", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.':
		case c >= 'A' && c <= 'Z':
			return errors.New("must be lower-case")
		case c == ':':
			return errors.New("must not contain a port (':')")
		default:
			return fmt.Errorf("invalid character %q at byte %d (allowed: a-z, 0-9, '-', '.')", rune(c), i)
		}
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return errors.New("empty label (leading, trailing or doubled '.')")
		case len(label) > 63:
			return fmt.Errorf("label %q longer than 63 bytes", label)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %q must not start or end with '-'", label)
		}
	}
	return nil
}

func validateAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if host == "" {
		return errors.New("host must not be empty")
	}
	if strings.ContainsAny(host, " \t\r\n") {
		return errors.New("host must not contain whitespace")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("port %q must be a number in 1-65535", port)
	}
	return nil
}

// validateIdentity is a light SPIFFE ID check; the identity package does
// the full validation when the peer is verified.
func validateIdentity(id string) error {
	const prefix = "spiffe://"
	if !strings.HasPrefix(id, prefix) {
		return fmt.Errorf("must start with %q", prefix)
	}
	td, _, _ := strings.Cut(id[len(prefix):], "/")
	if td == "" {
		return errors.New("missing trust domain")
	}
	if strings.ContainsAny(id, " \t\r\n") {
		return errors.New("must not contain whitespace")
	}
	return nil
}
