package static

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const ordersID = "spiffe://cluster.local/ns/shop/sa/orders"

func TestParseServicesCluster(t *testing.T) {
	data, err := os.ReadFile("testdata/cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseServices(data)
	if err != nil {
		t.Fatalf("ParseServices: %v", err)
	}
	want := map[string]discovery.Service{
		"orders.shop": {
			Name:       "orders.shop",
			VirtualIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
			Ports:      []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "grpc", Port: 9090}},
			Endpoints: []discovery.Endpoint{
				{Addr: "10.1.0.5:4143", Identity: ordersID, Weight: 1, Zone: "a", PodIP: netip.MustParseAddr("10.1.0.5"), Ports: []uint16{8080, 9090}},
				{Addr: "10.1.0.6:4143", Identity: ordersID, Weight: 1, Zone: "b", PodIP: netip.MustParseAddr("10.1.0.6"), Ports: []uint16{8080, 9090}, NotReady: true},
			},
		},
		"echo": {Name: "echo", Endpoints: []discovery.Endpoint{
			{Addr: "127.0.0.1:4143", Identity: "spiffe://cluster.local/ns/default/sa/echo", Weight: 1}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseServices =\n%#v\nwant\n%#v", got, want)
	}
	// Parse is the same, reduced to endpoints.
	eps, err := Parse(data)
	if err != nil || !reflect.DeepEqual(eps["orders.shop"], want["orders.shop"].Endpoints) {
		t.Errorf("Parse = %v, %v", eps, err)
	}
}

func TestParseServicesClusterFields(t *testing.T) {
	svc := func(fields string) string { return `{"services": {"orders.shop": {` + fields + `}}}` }
	pod := func(fields string) string {
		return svc(`"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `"` + fields + `}]`)
	}
	tests := []struct {
		name  string
		in    string
		check func(discovery.Service) bool
	}{
		{"ready true is ready", pod(`, "ready": true`), func(s discovery.Service) bool { return s.Endpoints[0].Ready() }},
		{"ready absent is ready", pod(``), func(s discovery.Service) bool { return s.Endpoints[0].Ready() }},
		{"ready false", pod(`, "ready": false`), func(s discovery.Service) bool { return !s.Endpoints[0].Ready() }},
		{"IPv4-mapped pod IP becomes IPv4", pod(`, "pod_ip": "::ffff:10.1.0.5"`),
			func(s discovery.Service) bool { return s.Endpoints[0].PodIP == netip.MustParseAddr("10.1.0.5") }},
		{"pod IP without ports", pod(`, "pod_ip": "fd00::5"`),
			func(s discovery.Service) bool { return s.Endpoints[0].PodIP.Is6() && s.Endpoints[0].Ports == nil }},
		{"ports without virtual IPs (headless)", svc(`"ports": [{"port": 80}]`),
			func(s discovery.Service) bool {
				return len(s.Ports) == 1 && s.VirtualIPs == nil && len(s.Endpoints) == 0
			}},
		{"target_port 0 means port", svc(`"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80, "target_port": 0}]`),
			func(s discovery.Service) bool { return s.Ports[0].Target() == 80 }},
		{"same peer in two services", `{"services": {
			"a": {"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5", "ports": [80]}]},
			"b": {"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5", "ports": [81]}]}}}`,
			nil},
		{"one virtual IP, two services, different ports", `{"services": {
			"a": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80}]},
			"b": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 81}]}}}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServices([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseServices: %v", err)
			}
			if tt.check != nil && !tt.check(got["orders.shop"]) {
				t.Errorf("got %#v", got["orders.shop"])
			}
		})
	}
}

// TestParseServicesClusterInvalid: every error names the service, the
// endpoint where there is one, and the field by its JSON path.
func TestParseServicesClusterInvalid(t *testing.T) {
	svc := func(fields string) string { return `{"services": {"orders.shop": {` + fields + `}}}` }
	pod := func(fields string) string {
		return svc(`"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `"` + fields + `}]`)
	}
	vip := `"virtual_ips": ["10.96.0.1"]`
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"virtual_ips not an array", svc(`"virtual_ips": "10.96.0.1"`),
			[]string{`service "orders.shop": virtual_ips must be a JSON array, got a string (at $.services["orders.shop"].virtual_ips`}},
		{"virtual IP a host name", svc(`"virtual_ips": ["orders"], "ports": [{"port": 80}]`),
			[]string{`service "orders.shop": invalid virtual IP "orders": not an IP address (at $.services["orders.shop"].virtual_ips[0], offset`}},
		{"virtual IP with port", svc(`"virtual_ips": ["10.96.0.1:80"]`), []string{`invalid virtual IP "10.96.0.1:80": not an IP address`}},
		{"virtual IP with zone", svc(`"virtual_ips": ["fe80::1%eth0"]`), []string{`invalid virtual IP "fe80::1%eth0": must not have a zone`}},
		{"virtual IP unspecified", svc(`"virtual_ips": ["0.0.0.0"]`), []string{`invalid virtual IP "0.0.0.0": must not be unspecified`}},
		{"virtual IP a number", svc(`"virtual_ips": [1]`), []string{`virtual IP must be a string, got a number (at $.services["orders.shop"].virtual_ips[0]`}},
		{"duplicate virtual IP", svc(`"virtual_ips": ["10.96.0.1", "::ffff:10.96.0.1"], "ports": [{"port": 80}]`),
			[]string{`duplicate virtual IP 10.96.0.1 (at $.services["orders.shop"].virtual_ips[1]`}},
		{"virtual IPs without ports", svc(vip),
			[]string{`service "orders.shop": virtual_ips needs ports: a virtual IP is reached at a service port (at $.services["orders.shop"].virtual_ips`}},
		{"virtual IPs with empty ports", svc(vip + `, "ports": []`), []string{"virtual_ips needs ports"}},
		{"ports not an array", svc(`"ports": 80`), []string{`ports must be a JSON array, got a number (at $.services["orders.shop"].ports`}},
		{"port a bare number", svc(`"ports": [80]`), []string{`a service port must be a JSON object, got a number (at $.services["orders.shop"].ports[0]`}},
		{"port missing", svc(`"ports": [{"name": "http"}]`), []string{`service "orders.shop": port is required (at $.services["orders.shop"].ports[0]`}},
		{"port zero", svc(`"ports": [{"port": 0}]`), []string{`port must be an integer in 1-65535, got 0 (at $.services["orders.shop"].ports[0].port`}},
		{"port too big", svc(`"ports": [{"port": 65536}]`), []string{"port must be an integer in 1-65535, got 65536"}},
		{"port a string", svc(`"ports": [{"port": "80"}]`), []string{"port must be an integer in 1-65535, got a string"}},
		{"target_port too big", svc(`"ports": [{"port": 80, "target_port": 70000}]`),
			[]string{`target_port must be an integer in 0-65535, got 70000 (at $.services["orders.shop"].ports[0].target_port`}},
		{"unknown port field", svc(`"ports": [{"port": 80, "protocol": "TCP"}]`),
			[]string{`unknown field "protocol" (at $.services["orders.shop"].ports[0].protocol`}},
		{"duplicate port", svc(`"ports": [{"port": 80}, {"port": 80, "target_port": 81}]`),
			[]string{`duplicate port 80: same as ports[0] (at $.services["orders.shop"].ports[1].port`}},
		{"duplicate port name", svc(`"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]`),
			[]string{`duplicate port name "http": same as ports[0] (at $.services["orders.shop"].ports[1].name`}},
		{"pod_ip a host name", pod(`, "pod_ip": "pod-a"`),
			[]string{`service "orders.shop": endpoint 0: invalid pod_ip "pod-a": not an IP address (at $.services["orders.shop"].endpoints[0].pod_ip, offset`}},
		{"pod_ip unspecified", pod(`, "pod_ip": "::"`), []string{`endpoint 0: invalid pod_ip "::": must not be unspecified`}},
		{"pod_ip null", pod(`, "pod_ip": null`), []string{`endpoint 0: pod_ip must be a string, got null`}},
		{"endpoint ports without pod_ip", pod(`, "ports": [80]`),
			[]string{`service "orders.shop": endpoint 0: ports needs pod_ip: they are ports of the pod IP (at $.services["orders.shop"].endpoints[0].ports`}},
		{"endpoint port zero", pod(`, "pod_ip": "10.1.0.5", "ports": [0]`),
			[]string{`endpoint 0: port must be an integer in 1-65535, got 0 (at $.services["orders.shop"].endpoints[0].ports[0]`}},
		{"endpoint port object", pod(`, "pod_ip": "10.1.0.5", "ports": [{"port": 80}]`), []string{`endpoint 0: port must be an integer in 1-65535, got an object`}},
		{"endpoint duplicate port", pod(`, "pod_ip": "10.1.0.5", "ports": [80, 80]`),
			[]string{`endpoint 0: duplicate port 80 (at $.services["orders.shop"].endpoints[0].ports[1]`}},
		{"ready a string", pod(`, "ready": "true"`),
			[]string{`endpoint 0: ready must be true or false, got a string (at $.services["orders.shop"].endpoints[0].ready`}},
		{"ready null", pod(`, "ready": null`), []string{"ready must be true or false, got null"}},

		// Addresses claimed twice.
		{"virtual address of two services", `{"services": {
			"a": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 80}]},
			"b": {"ports": [{"port": 81}, {"port": 80}], "virtual_ips": ["10.96.0.2", "10.96.0.1"]}}}`,
			[]string{`service "b": virtual address 10.96.0.1:80 is also service "a"'s (at $.services["b"].virtual_ips[1], offset`}},
		{"pod IP of two peers", `{"services": {
			"a": {"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"}]},
			"b": {"endpoints": [{"addr": "10.1.0.6:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.6"},
				{"addr": "10.1.0.9:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"}]}}}`,
			[]string{`service "b": endpoint 1: pod_ip 10.1.0.5 is also service "a" endpoint 0's, which has another addr or identity (at $.services["b"].endpoints[1].pod_ip, offset`}},
		{"pod IP of two peers in one service", svc(`"endpoints": [
			{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"},
			{"addr": "10.1.0.5:4143", "identity": "spiffe://cluster.local/ns/shop/sa/other", "pod_ip": "10.1.0.5"}]`),
			[]string{`service "orders.shop": endpoint 1: pod_ip 10.1.0.5 is also service "orders.shop" endpoint 0's`}},
		{"pod IP that is an earlier virtual IP", `{"services": {
			"a": {"virtual_ips": ["10.1.0.5"], "ports": [{"port": 80}]},
			"b": {"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"}]}}}`,
			[]string{`service "b": endpoint 0: pod_ip 10.1.0.5 is a virtual IP of service "a" (at $.services["b"].endpoints[0].pod_ip`}},
		{"virtual IP that is an earlier pod IP", `{"services": {
			"b": {"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"}]},
			"a": {"virtual_ips": ["10.1.0.5"], "ports": [{"port": 80}]}}}`,
			[]string{`service "a": virtual IP 10.1.0.5 is the pod_ip of service "b" endpoint 0 (at $.services["a"].virtual_ips[0]`}},
		{"a service's own pod IP as its virtual IP", svc(`"virtual_ips": ["10.1.0.5"], "ports": [{"port": 80}],
			"endpoints": [{"addr": "10.1.0.5:4143", "identity": "` + ordersID + `", "pod_ip": "10.1.0.5"}]`),
			[]string{`service "orders.shop": virtual IP 10.1.0.5 is the pod_ip of service "orders.shop" endpoint 0`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServices([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseServices succeeded with %#v, want an error", got)
			}
			if got != nil {
				t.Errorf("data returned with an error")
			}
			if _, ok := err.(*ParseError); !ok {
				t.Errorf("error %T is not a *ParseError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %v\ndoes not contain\n  %s", err, w)
				}
			}
		})
	}
}

// TestNewNamesFileServiceField: a loaded file's error names the file, the
// service and the field.
func TestNewNamesFileServiceField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "services.json")
	writeFile(t, path, `{"services": {"orders.shop": {"virtual_ips": ["10.96.0.1"], "ports": [{"port": 0}]}}}`)
	r, err := New(path, Options{PollInterval: poll})
	if err == nil {
		r.Close()
		t.Fatal("New succeeded")
	}
	for _, w := range []string{path, `service "orders.shop"`, `$.services["orders.shop"].ports[0].port`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}

// TestDocumentedFilesLoad parses every discovery file the documentation
// shows: the old format (README, operations guide) must still load, and
// the cluster example must be valid.
func TestDocumentedFilesLoad(t *testing.T) {
	blocks := 0
	for _, doc := range []string{"../../README.md", "../../docs/operations.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		// JSON blocks and heredocs that start with {"services":
		re := regexp.MustCompile("(?s)(?:```json\n|<<'JSON'\n)(\\{\"services\".*?)\n(?:```|JSON\n)")
		for _, m := range re.FindAllSubmatch(b, -1) {
			blocks++
			if _, err := ParseServices(m[1]); err != nil {
				t.Errorf("%s: documented file does not load: %v\n%s", doc, err, m[1])
			}
		}
	}
	if blocks < 3 {
		t.Errorf("found %d documented discovery files, want at least 3 (README, operations: old and cluster format)", blocks)
	}
}

// TestCatalogFollowsReloads: WatchCatalog yields the current services and
// each reload's; an Index fed by it answers for the new data.
func TestCatalogFollowsReloads(t *testing.T) {
	r, path, _ := newFileResolver(t, `{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "`+echoID+`"}]}}}`)
	w, err := r.WatchCatalog(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first, err := w.Next(t.Context())
	if err != nil || len(first) != 1 || first[0].Name != "echo" || first[0].VirtualIPs != nil {
		t.Fatalf("first list = %+v, %v", first, err)
	}

	ix := discovery.NewIndex()
	follow := make(chan error, 1)
	go func() { follow <- ix.Follow(t.Context(), r, nil) }()
	<-ix.Synced()
	if got := ix.Lookup(netip.MustParseAddrPort("10.96.0.10:80")); got.Kind != discovery.Unknown {
		t.Fatalf("before the reload: %+v", got)
	}

	data, err := os.ReadFile("testdata/cluster.json")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(data))
	second, err := w.Next(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(second) != 2 || second[0].Name != "echo" || second[1].Name != "orders.shop" || len(second[1].VirtualIPs) != 2 {
		t.Fatalf("second list = %+v", second)
	}
	// The list is a copy: changing it does not change the resolver's.
	second[1].VirtualIPs[0] = netip.Addr{}
	testkit.Eventually(t, "the index to know the reloaded virtual IP", func() bool {
		got := ix.Lookup(netip.MustParseAddrPort("10.96.0.10:80"))
		return got.Kind == discovery.ServiceTarget && got.Service == "orders.shop"
	})
	if got := ix.Lookup(netip.MustParseAddrPort("10.1.0.6:8080")); got.Kind != discovery.EndpointTarget || got.Endpoint.Ready() {
		t.Errorf("not-ready pod: %+v", got)
	}

	r.SetServices([]discovery.Service{{Name: "x", VirtualIPs: []netip.Addr{netip.MustParseAddr("10.96.0.99")},
		Ports: []discovery.ServicePort{{Port: 80}}}})
	third, err := w.Next(t.Context())
	if err != nil || len(third) != 1 || third[0].Name != "x" {
		t.Fatalf("third list = %+v, %v", third, err)
	}
	testkit.Eventually(t, "the index to follow Set", func() bool {
		return ix.Lookup(netip.MustParseAddrPort("10.96.0.99:80")).Kind == discovery.ServiceTarget &&
			ix.Lookup(netip.MustParseAddrPort("10.96.0.10:80")).Kind == discovery.Unknown
	})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Next(t.Context()); !errors.Is(err, discovery.ErrClosed) {
		t.Errorf("Next after Close = %v, want ErrClosed", err)
	}
	if err := <-follow; !errors.Is(err, discovery.ErrClosed) {
		t.Errorf("Follow after the resolver closed = %v, want ErrClosed", err)
	}
	if _, err := r.WatchCatalog(t.Context()); err == nil {
		t.Error("WatchCatalog after Close succeeded")
	}
}

// TestReadinessChangeNotifies: flipping ready alone is a change of the
// set that watches hear of.
func TestReadinessChangeNotifies(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1"), ep("b:2")}})
	defer r.Close()
	w := resolve(t, r, "echo")
	wantReset(t, next(t, w), "a:1", "b:2")
	b := ep("b:2")
	b.NotReady = true
	r.Set(map[string][]discovery.Endpoint{"echo": {ep("a:1"), b}})
	u := next(t, w)
	if len(u.Endpoints) != 2 || u.Endpoints[0].NotReady || !u.Endpoints[1].NotReady {
		t.Errorf("update after the readiness change = %+v", u)
	}
}
