package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
)

func TestServerNames(t *testing.T) {
	ep := discovery.Endpoint{Addr: "10.1.0.5:4143", Identity: "spiffe://west.local/ns/shop/sa/orders"}
	name := EndpointName(ep)
	label := EndpointLabel(ep)
	if want := label + "." + Suffix; name != want {
		t.Fatalf("EndpointName = %q, want %q", name, want)
	}
	if strings.Contains(name, "10") && strings.Contains(name, "4143") {
		t.Errorf("server name %q spells out the endpoint's address", name)
	}
	if other := EndpointLabel(discovery.Endpoint{Addr: "10.1.0.6:4143", Identity: ep.Identity}); other == label {
		t.Errorf("two endpoints share the label %q", label)
	}
	svc, err := ServiceName("orders.shop")
	if err != nil || svc != "any.orders.shop."+Suffix {
		t.Fatalf("ServiceName = %q, %v", svc, err)
	}
	for _, tt := range []struct{ in, service, endpoint string }{
		{name, "", label},
		{strings.ToUpper(name) + ".", "", label}, // DNS names are case-insensitive
		{svc, "orders.shop", ""},
	} {
		s, e, err := ParseName(tt.in)
		if err != nil || s != tt.service || e != tt.endpoint {
			t.Errorf("ParseName(%q) = %q, %q, %v; want %q, %q", tt.in, s, e, err, tt.service, tt.endpoint)
		}
	}
	for _, bad := range []string{
		"orders.shop",                     // not under the suffix
		"any." + Suffix,                   // no service
		"x.orders.shop." + Suffix,         // neither any nor an endpoint label
		"e-short.orders.shop." + Suffix,   // not an endpoint label
		"test.local",                      // what a sidecar sends without a gateway
		"orders.shop.gw.quicmesh.invalid", // the service's labels taken as selector and service
	} {
		if _, _, err := ParseName(bad); !errors.Is(err, ErrNotGatewayName) {
			t.Errorf("ParseName(%q) = %v, want ErrNotGatewayName", bad, err)
		}
	}
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 56)
	if _, err := ServiceName(long); err == nil {
		t.Errorf("ServiceName accepted a %d-byte service, whose name exceeds 253 bytes", len(long))
	}
}

func TestImportsListEachReadyEndpointAtTheGateway(t *testing.T) {
	id := "spiffe://west.local/ns/shop/sa/orders"
	eps := []discovery.Endpoint{
		{Addr: "10.1.0.5:4143", Identity: id, Weight: 2, Zone: "a"},
		{Addr: "10.1.0.6:4143", Identity: id, NotReady: true},
		{Addr: "10.1.0.7:4143", Identity: id},
	}
	got := Imports(eps, "192.0.2.10:4443")
	if len(got) != 2 {
		t.Fatalf("Imports = %d endpoints, want the 2 ready ones", len(got))
	}
	for i, src := range []discovery.Endpoint{eps[0], eps[2]} {
		want := EndpointName(src)
		g := got[i]
		if g.Addr != "192.0.2.10:4443" || g.ServerName != want || g.Identity != id || g.Weight != src.Weight || g.Zone != src.Zone {
			t.Errorf("import %d = %+v, want at the gateway with server name %q and the endpoint's identity, weight and zone", i, g, want)
		}
	}
	if got[0].Key() == got[1].Key() {
		t.Error("two imported endpoints share a key")
	}
}
