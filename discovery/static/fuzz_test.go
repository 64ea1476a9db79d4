package static

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
)

// The file format, for re-encoding parsed data.
type (
	fileFormat struct {
		Services map[string]fileService `json:"services"`
	}
	fileService struct {
		VirtualIPs []netip.Addr            `json:"virtual_ips,omitempty"`
		Ports      []discovery.ServicePort `json:"ports,omitempty"`
		Endpoints  []fileEndpoint          `json:"endpoints"`
	}
	// fileEndpoint is an Endpoint as the file spells it: "ready" (false
	// only) where the model's JSON has "not_ready", which the outer
	// field, never set, hides.
	fileEndpoint struct {
		discovery.Endpoint
		NotReady *struct{} `json:"not_ready,omitempty"`
		Ready    *bool     `json:"ready,omitempty"`
	}
)

func encode(t testing.TB, m map[string]discovery.Service) []byte {
	f := fileFormat{Services: map[string]fileService{}}
	for name, s := range m {
		fs := fileService{VirtualIPs: s.VirtualIPs, Ports: s.Ports, Endpoints: []fileEndpoint{}}
		for _, ep := range s.Endpoints {
			fe := fileEndpoint{Endpoint: ep}
			if ep.NotReady {
				fe.Ready = new(bool)
			}
			fs.Endpoints = append(fs.Endpoints, fe)
		}
		f.Services[name] = fs
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// FuzzParse checks that ParseServices never panics, that every error is a
// *ParseError, that whatever it accepts satisfies the validation rules
// (addresses included) and survives a re-encode/re-parse round trip
// unchanged, and that Parse agrees with it.
func FuzzParse(f *testing.F) {
	seeds := []string{
		`{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "spiffe://demo.local/ns/default/sa/echo", "weight": 1, "zone": "a", "metadata": {"k":"v"}}]}}}`,
		`{}`,
		`{"services": {}}`,
		`{"services": {"echo": {}}}`,
		`{"services": {"a.b-c": {"endpoints": [{"addr": "[::1]:1", "identity": "spiffe://x"}, {"addr": "h:65535", "identity": "spiffe://x/y", "weight": 0}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "metadata": {"a": "<&>", "\u00e9": "\ud83d\ude00"}}]}}}`,
		``,
		`null`,
		`[]`,
		`{"services": {`,
		`{"services": {"echo": {"endpoints": [}]}}}`,
		`{} {}`,
		`{"servces": {}}`,
		`{"services": {"Echo:80": {}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h", "identity": "spiffe://x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:0", "identity": "x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "weight": -1.5e3}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x"}, {"addr": "h:1", "identity": "spiffe://x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "metadata": {"k": null}}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "addr": "h:2"}]}}}`,
		"{\"services\": {\"e\xffcho\": {}}}",
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"services": {"echo": {"endpoints": [[[[[[{}]]]]]]}}}`,
		// The cluster fields.
		`{"services": {"orders.shop": {"virtual_ips": ["10.96.0.10", "fd00:96::10"], "ports": [{"name": "http", "port": 80, "target_port": 8080}, {"port": 9090}],
			"endpoints": [{"addr": "10.1.0.5:4143", "identity": "spiffe://c/ns/shop/sa/orders", "pod_ip": "10.1.0.5", "ports": [8080, 9090], "ready": true},
			{"addr": "10.1.0.6:4143", "identity": "spiffe://c/ns/shop/sa/orders", "pod_ip": "::ffff:10.1.0.6", "ready": false}]}}}`,
		`{"services": {"a": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80}]}, "b": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80}]}}}`,
		`{"services": {"a": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80}]}, "b": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 81}]}}}`,
		`{"services": {"a": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "pod_ip": "10.1.0.1"}]}, "b": {"endpoints": [{"addr": "h:2", "identity": "spiffe://x", "pod_ip": "10.1.0.1"}]}}}`,
		`{"services": {"a": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "pod_ip": "10.1.0.1"}]}, "b": {"virtual_ips": ["10.1.0.1"], "ports": [{"port": 1}]}}}`,
		`{"services": {"a": {"virtual_ips": ["10.96.0.1"]}}}`,
		`{"services": {"a": {"virtual_ips": ["fe80::1%eth0", "0.0.0.0", "h"], "ports": [{"port": 0, "target_port": 65536}, {"port": 80}, {"port": 80}]}}}`,
		`{"services": {"a": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "ports": [1, 1], "ready": "yes"}]}}}`,
		`{"services": {"a": {"ports": [{"name": "x", "port": 1}, {"name": "x", "port": 2}], "virtual_ips": [null]}}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseServices(data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *ParseError", err, err)
			}
			if m != nil {
				t.Fatalf("data returned with error")
			}
			if err.Error() == "" {
				t.Fatalf("empty error message")
			}
			if eps, err2 := Parse(data); err2 == nil || eps != nil || err2.Error() != err.Error() {
				t.Fatalf("Parse disagrees: %v, %v vs %v", eps, err2, err)
			}
			return
		}
		checkAccepted(t, m)
		again, err := ParseServices(encode(t, m))
		if err != nil {
			t.Fatalf("re-parse of re-encoded data failed: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed data:\n%#v\n%#v", m, again)
		}
		eps, err := Parse(data)
		if err != nil || len(eps) != len(m) {
			t.Fatalf("Parse disagrees: %v, %v", eps, err)
		}
		for name, s := range m {
			if !reflect.DeepEqual(eps[name], s.Endpoints) {
				t.Fatalf("Parse disagrees on %q", name)
			}
		}
		// What the file accepts, the index takes without conflicts.
		list := make([]discovery.Service, 0, len(m))
		for _, s := range m {
			list = append(list, s)
		}
		if err := discovery.NewIndex().Set(list); err != nil {
			t.Fatalf("accepted data has conflicting addresses: %v", err)
		}
	})
}

// checkAccepted checks the validation rules on data ParseServices
// accepted.
func checkAccepted(t *testing.T, m map[string]discovery.Service) {
	t.Helper()
	goodIP := func(a netip.Addr) bool {
		return a.IsValid() && !a.IsUnspecified() && a.Zone() == "" && !a.Is4In6()
	}
	for name, s := range m {
		if err := validateServiceName(name); err != nil {
			t.Fatalf("accepted invalid service name %q: %v", name, err)
		}
		if s.Name != name {
			t.Fatalf("service %q has name %q", name, s.Name)
		}
		if s.Endpoints == nil {
			t.Fatalf("service %q has a nil endpoint slice", name)
		}
		if len(s.VirtualIPs) > 0 && len(s.Ports) == 0 {
			t.Fatalf("service %q: virtual IPs without ports", name)
		}
		for i, a := range s.VirtualIPs {
			if !goodIP(a) || slices.Contains(s.VirtualIPs[:i], a) {
				t.Fatalf("service %q: accepted virtual IP %v", name, a)
			}
		}
		for i, p := range s.Ports {
			if p.Port == 0 || slices.ContainsFunc(s.Ports[:i], func(o discovery.ServicePort) bool {
				return o.Port == p.Port || (p.Name != "" && o.Name == p.Name)
			}) {
				t.Fatalf("service %q: accepted port %+v", name, p)
			}
		}
		keys := make(map[string]bool)
		for i, ep := range s.Endpoints {
			if err := validateAddr(ep.Addr); err != nil {
				t.Fatalf("%s[%d]: accepted invalid addr %q: %v", name, i, ep.Addr, err)
			}
			if !strings.HasPrefix(ep.Identity, "spiffe://") || len(ep.Identity) <= len("spiffe://") {
				t.Fatalf("%s[%d]: accepted invalid identity %q", name, i, ep.Identity)
			}
			if ep.Weight == 0 {
				t.Fatalf("%s[%d]: weight 0 not defaulted", name, i)
			}
			if ep.Metadata != nil && len(ep.Metadata) == 0 {
				t.Fatalf("%s[%d]: empty non-nil metadata", name, i)
			}
			if ep.PodIP.IsValid() && !goodIP(ep.PodIP) {
				t.Fatalf("%s[%d]: accepted pod IP %v", name, i, ep.PodIP)
			}
			if len(ep.Ports) > 0 && !ep.PodIP.IsValid() {
				t.Fatalf("%s[%d]: ports without a pod IP", name, i)
			}
			for j, p := range ep.Ports {
				if p == 0 || slices.Contains(ep.Ports[:j], p) {
					t.Fatalf("%s[%d]: accepted port %d", name, i, p)
				}
			}
			if keys[ep.Key()] {
				t.Fatalf("%s[%d]: accepted duplicate endpoint %q", name, i, ep.Key())
			}
			keys[ep.Key()] = true
		}
	}
}
