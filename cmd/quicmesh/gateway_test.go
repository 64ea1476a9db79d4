package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

const westFile = `{"services": {
  "orders.shop": {"endpoints": [
    {"addr": "10.1.0.5:4143", "identity": "spiffe://west.local/ns/shop/sa/orders", "weight": 2},
    {"addr": "10.1.0.6:4143", "identity": "spiffe://west.local/ns/shop/sa/orders", "ready": false}]},
  "db.shop": {"endpoints": [{"addr": "10.1.0.9:4143", "identity": "spiffe://west.local/ns/shop/sa/db"}]}}}`

// The import file --print-imports writes is a discovery file the
// importing cluster can load as it is: the exported service only, its
// ready endpoints at the gateway, each with its server name and its own
// identity.
func TestGatewayPrintImports(t *testing.T) {
	file := filepath.Join(t.TempDir(), "west.json")
	if err := os.WriteFile(file, []byte(westFile), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"gateway", "--discovery-file", file, "--export", "orders.shop", "--print-imports", "192.0.2.10:4443"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	svcs, err := static.ParseServices(out.Bytes())
	if err != nil {
		t.Fatalf("the import file does not load: %v\n%s", err, out.String())
	}
	if _, ok := svcs["db.shop"]; ok || len(svcs) != 1 {
		t.Fatalf("imports %v, want orders.shop only", svcs)
	}
	eps := svcs["orders.shop"].Endpoints
	if len(eps) != 1 {
		t.Fatalf("%d endpoints, want the one ready endpoint", len(eps))
	}
	ep := eps[0]
	svc, label, err := gateway.ParseName(ep.ServerName)
	if ep.Addr != "192.0.2.10:4443" || ep.Identity != "spiffe://west.local/ns/shop/sa/orders" || ep.Weight != 2 || err != nil || svc != "" || label == "" {
		t.Fatalf("imported endpoint %+v (server name: %v), want at the gateway with an endpoint server name and its identity and weight", ep, err)
	}
}

func TestGatewayFlagErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "west.json")
	if err := os.WriteFile(file, []byte(westFile), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--export", "orders.shop"}, "--discovery-file is required"},
		{[]string{"--discovery-file", file}, "--export is required"},
		{[]string{"--discovery-file", file, "--export", "nope", "--print-imports", "192.0.2.10:4443"}, "--export nope: no such service"},
		{[]string{"--discovery-file", file, "--export", "orders.shop", "--print-imports", "192.0.2.10"}, "--print-imports"},
		{[]string{"--discovery-file", file, "--export", "orders.shop", "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"--discovery-file", file, "--export", "orders.shop", "--max-flows", "0"}, "must be positive"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"gateway"}, tt.args...), &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), tt.want) {
			t.Errorf("gateway %v: exit %d, stderr %q; want 1 and %q", tt.args, code, errb.String(), tt.want)
		}
	}
}
