package sidecar

import (
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
)

// What Start refuses before it opens anything, and the listeners it
// binds, by name.
func TestCheck(t *testing.T) {
	var prov identity.Provider = &identity.FileProvider{} // never asked: check only looks for one
	res := static.NewFromMap(nil)
	t.Cleanup(func() { res.Close() })
	deps := Deps{Identity: prov, Resolver: res}
	bind := func(name, listen, svc string) Bind { return Bind{Name: name, Listen: listen, Service: svc} }
	tests := []struct {
		name      string
		deps      Deps
		opts      Options
		wantNames []string
		wantErr   string
	}{
		{name: "no identity", deps: Deps{Resolver: res}, wantErr: "no identity provider"},
		{name: "no resolver", deps: Deps{Identity: prov}, wantErr: "no discovery resolver"},
		{name: "a socket and an address", deps: Deps{Identity: prov, Resolver: res, PacketConn: &net.UDPConn{}},
			opts: Options{InboundAddr: "127.0.0.1:4143"}, wantErr: "both a UDP socket and an inbound address (127.0.0.1:4143)"},
		{name: "a socket alone", deps: Deps{Identity: prov, Resolver: res, PacketConn: &net.UDPConn{}}, wantNames: nil},
		{name: "no listeners", deps: deps, wantNames: nil},
		{name: "the HTTP proxy and binds, named", deps: deps,
			opts: Options{Listeners: Listeners{HTTPProxy: "127.0.0.1:4140", Binds: []Bind{
				bind("", "127.0.0.1:7001", "db"), bind("", "127.0.0.1:7002", "db"), bind("web", "127.0.0.1:0", "web")}}},
			wantNames: []string{HTTPProxyListener, "bind 127.0.0.1:7001=db", "bind 127.0.0.1:7002=db", "web"}},
		{name: "two listeners of one name", deps: deps,
			opts:    Options{Listeners: Listeners{Binds: []Bind{bind("x", "127.0.0.1:0", "a"), bind("x", "127.0.0.1:0", "b")}}},
			wantErr: `two listeners named "x"`},
		{name: "a bind named as the HTTP proxy", deps: deps,
			opts:    Options{Listeners: Listeners{HTTPProxy: "127.0.0.1:0", Binds: []Bind{bind(HTTPProxyListener, "127.0.0.1:0", "a")}}},
			wantErr: `two listeners named "http-proxy"`},
		{name: "a bind without a service", deps: deps,
			opts:    Options{Listeners: Listeners{Binds: []Bind{bind("", "127.0.0.1:7001", "")}}},
			wantErr: `listener "bind 127.0.0.1:7001=" (127.0.0.1:7001): no service`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs, err := check(tt.deps, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, sp := range specs {
				names = append(names, sp.name)
			}
			if !reflect.DeepEqual(names, tt.wantNames) {
				t.Fatalf("listeners %q, want %q", names, tt.wantNames)
			}
		})
	}
}
