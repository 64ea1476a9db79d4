package controlplane

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

const testID = "spiffe://td/ns/n/sa/s"

func pbEndpoint(addr, podIP string, ready bool) *controlpb.Endpoint {
	return &controlpb.Endpoint{Address: addr, Identity: testID, Weight: 2, Zone: "z", Ready: ready, PodIp: podIP,
		Ports: []*controlpb.Port{{Name: "http", Port: 8080, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}}}
}

func wantEndpoint(addr, podIP string, ready bool) discovery.Endpoint {
	return discovery.Endpoint{Addr: addr, Identity: testID, Weight: 2, Zone: "z", NotReady: !ready,
		PodIP: netip.MustParseAddr(podIP), Ports: []uint16{53, 8080}}
}

func TestConvert(t *testing.T) {
	tests := []struct {
		name string
		in   *controlpb.EndpointUpdate
		want []discovery.Update
	}{
		{"snapshot carries every endpoint, not-ready ones marked",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT, Endpoints: []*controlpb.Endpoint{pbEndpoint("10.0.0.1:4143", "10.0.0.1", true), pbEndpoint("10.0.0.2:4143", "10.0.0.2", false)}},
			[]discovery.Update{{Kind: discovery.Reset, Endpoints: []discovery.Endpoint{wantEndpoint("10.0.0.1:4143", "10.0.0.1", true), wantEndpoint("10.0.0.2:4143", "10.0.0.2", false)}}}},
		{"empty snapshot empties the set",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT},
			[]discovery.Update{{Kind: discovery.Reset}}},
		{"an addition replaces, readiness included",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_ADD, Endpoints: []*controlpb.Endpoint{pbEndpoint("10.0.0.2:4143", "10.0.0.2", false)}},
			[]discovery.Update{{Kind: discovery.Add, Endpoints: []discovery.Endpoint{wantEndpoint("10.0.0.2:4143", "10.0.0.2", false)}}}},
		{"an empty addition changes nothing",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_ADD},
			nil},
		{"removal carries keys whatever else is sent",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_REMOVE, Endpoints: []*controlpb.Endpoint{pbEndpoint("a:1", "10.0.0.1", true)}},
			[]discovery.Update{{Kind: discovery.Remove, Endpoints: []discovery.Endpoint{{Addr: "a:1", Identity: testID}}}}},
		{"weight 0 is 1; a bad pod IP and ports out of range are dropped; ports sorted and unique",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_ADD, Endpoints: []*controlpb.Endpoint{{Address: "a:1", Identity: testID, Ready: true, PodIp: "10.0.0.300",
				Ports: []*controlpb.Port{{Port: 9090}, {Port: 0}, {Port: 70000}, {Port: 80}, {Port: 9090, Protocol: "UDP"}}}}},
			[]discovery.Update{{Kind: discovery.Add, Endpoints: []discovery.Endpoint{{Addr: "a:1", Identity: testID, Weight: 1, Ports: []uint16{80, 9090}}}}}},
		{"IPv4-mapped pod IP is unmapped; an IPv6 one kept; no ports means none known",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT, Endpoints: []*controlpb.Endpoint{
				{Address: "a:1", Identity: testID, Ready: true, PodIp: "::ffff:10.0.0.1"},
				{Address: "b:1", Identity: testID, Ready: true, PodIp: "fd00::1"}}},
			[]discovery.Update{{Kind: discovery.Reset, Endpoints: []discovery.Endpoint{
				{Addr: "a:1", Identity: testID, Weight: 1, PodIP: netip.MustParseAddr("10.0.0.1")},
				{Addr: "b:1", Identity: testID, Weight: 1, PodIP: netip.MustParseAddr("fd00::1")}}}}},
		{"an unknown kind changes nothing",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind(99), Endpoints: []*controlpb.Endpoint{pbEndpoint("a:1", "10.0.0.1", true)}},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := convert(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("convert:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConvertService(t *testing.T) {
	tests := []struct {
		name string
		in   *controlpb.Service
		want discovery.Service
	}{
		{"virtual IPs, TCP ports with targets, every endpoint",
			&controlpb.Service{Name: "web.shop", VirtualIps: []string{"10.96.0.10", "fd00::a"},
				Ports: []*controlpb.ServicePort{
					{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
					{Name: "admin", Port: 9000},
					{Name: "dns", Port: 53, TargetPort: 5353, Protocol: "UDP"},
					{Name: "sctp", Port: 36412, Protocol: "SCTP"},
				},
				Endpoints: []*controlpb.Endpoint{pbEndpoint("10.0.0.1:4143", "10.0.0.1", true), pbEndpoint("10.0.0.2:4143", "10.0.0.2", false)}},
			discovery.Service{Name: "web.shop",
				VirtualIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")},
				Ports:      []discovery.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "admin", Port: 9000}},
				Endpoints:  []discovery.Endpoint{wantEndpoint("10.0.0.1:4143", "10.0.0.1", true), wantEndpoint("10.0.0.2:4143", "10.0.0.2", false)}}},
		{"headless, no endpoints",
			&controlpb.Service{Name: "db.shop"},
			discovery.Service{Name: "db.shop", Endpoints: []discovery.Endpoint{}}},
		{"bad virtual IPs and ports out of range are dropped",
			&controlpb.Service{Name: "x.y", VirtualIps: []string{"None", "", "10.96.0.300", "::ffff:10.96.0.1"},
				Ports: []*controlpb.ServicePort{{Port: 0}, {Port: 65536}, {Port: 80, TargetPort: 65536}, {Port: 443}}},
			discovery.Service{Name: "x.y", VirtualIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
				Ports: []discovery.ServicePort{{Port: 443}}, Endpoints: []discovery.Endpoint{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := service(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("service:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestApplyCatalog(t *testing.T) {
	svc := func(name, vip string) *controlpb.Service {
		return &controlpb.Service{Name: name, VirtualIps: []string{vip}}
	}
	names := func(cat map[string]discovery.Service) []string {
		var out []string
		for _, s := range sortedCatalog(cat) {
			out = append(out, s.Name+"="+s.VirtualIPs[0].String())
		}
		return out
	}
	var cat map[string]discovery.Service
	steps := []struct {
		msg     *controlpb.IndexUpdate
		changed bool
		want    []string
	}{
		{&controlpb.IndexUpdate{Kind: controlpb.Kind_SNAPSHOT, Services: []*controlpb.Service{svc("b.n", "10.0.0.2"), svc("a.n", "10.0.0.1")}}, true, []string{"a.n=10.0.0.1", "b.n=10.0.0.2"}},
		{&controlpb.IndexUpdate{Kind: controlpb.Kind_ADD, Services: []*controlpb.Service{svc("a.n", "10.0.0.9"), svc("c.n", "10.0.0.3")}}, true, []string{"a.n=10.0.0.9", "b.n=10.0.0.2", "c.n=10.0.0.3"}},
		{&controlpb.IndexUpdate{Kind: controlpb.Kind_REMOVE, Services: []*controlpb.Service{{Name: "b.n"}, {Name: "gone.n"}}}, true, []string{"a.n=10.0.0.9", "c.n=10.0.0.3"}},
		{&controlpb.IndexUpdate{Kind: controlpb.Kind(99), Services: []*controlpb.Service{svc("d.n", "10.0.0.4")}}, false, []string{"a.n=10.0.0.9", "c.n=10.0.0.3"}},
		{&controlpb.IndexUpdate{Kind: controlpb.Kind_SNAPSHOT, Services: []*controlpb.Service{svc("d.n", "10.0.0.4")}}, true, []string{"d.n=10.0.0.4"}},
	}
	for i, s := range steps {
		if changed := applyCatalog(&cat, s.msg); changed != s.changed || !reflect.DeepEqual(names(cat), s.want) {
			t.Fatalf("step %d: changed %v, catalog %v; want %v, %v", i, changed, names(cat), s.changed, s.want)
		}
	}
}
