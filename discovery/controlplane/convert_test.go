package controlplane

import (
	"reflect"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

func TestConvert(t *testing.T) {
	pb := func(addr string, ready bool) *controlpb.Endpoint {
		return &controlpb.Endpoint{Address: addr, Identity: "spiffe://td/ns/n/sa/s", Weight: 2, Zone: "z", Ready: ready}
	}
	ep := func(addr string) discovery.Endpoint {
		return discovery.Endpoint{Addr: addr, Identity: "spiffe://td/ns/n/sa/s", Weight: 2, Zone: "z"}
	}
	tests := []struct {
		name string
		in   *controlpb.EndpointUpdate
		want []discovery.Update
	}{
		{"snapshot keeps only ready endpoints",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT, Endpoints: []*controlpb.Endpoint{pb("a:1", true), pb("b:1", false)}},
			[]discovery.Update{{Kind: discovery.Reset, Endpoints: []discovery.Endpoint{ep("a:1")}}}},
		{"empty snapshot empties the set",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_SNAPSHOT},
			[]discovery.Update{{Kind: discovery.Reset}}},
		{"an addition of a not-ready endpoint withdraws it",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_ADD, Endpoints: []*controlpb.Endpoint{pb("a:1", true), pb("b:1", false)}},
			[]discovery.Update{{Kind: discovery.Remove, Endpoints: []discovery.Endpoint{ep("b:1")}}, {Kind: discovery.Add, Endpoints: []discovery.Endpoint{ep("a:1")}}}},
		{"removal carries keys whatever their readiness",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind_REMOVE, Endpoints: []*controlpb.Endpoint{{Address: "a:1", Identity: "spiffe://td/ns/n/sa/s"}}},
			[]discovery.Update{{Kind: discovery.Remove, Endpoints: []discovery.Endpoint{{Addr: "a:1", Identity: "spiffe://td/ns/n/sa/s", Weight: 1}}}}},
		{"an unknown kind changes nothing",
			&controlpb.EndpointUpdate{Kind: controlpb.Kind(99), Endpoints: []*controlpb.Endpoint{pb("a:1", true)}},
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
