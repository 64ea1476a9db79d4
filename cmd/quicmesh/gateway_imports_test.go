package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/quicmesh/quicmesh/discovery/static"
)

// With two gateway addresses, --print-imports lists every exported
// endpoint once per gateway, with the same server name and identity, so
// the importing sidecars balance over both gateways and fail over.
func TestGatewayPrintImportsTwoGateways(t *testing.T) {
	file := filepath.Join(t.TempDir(), "west.json")
	if err := os.WriteFile(file, []byte(westFile), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"gateway", "--discovery-file", file, "--export", "orders.shop", "--print-imports", "192.0.2.10:4443,192.0.2.11:4443"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	svcs, err := static.ParseServices(out.Bytes())
	if err != nil {
		t.Fatalf("the import file does not load: %v\n%s", err, out.String())
	}
	eps := svcs["orders.shop"].Endpoints
	if len(eps) != 2 || eps[0].Addr != "192.0.2.10:4443" || eps[1].Addr != "192.0.2.11:4443" ||
		eps[0].ServerName != eps[1].ServerName || eps[0].Identity != eps[1].Identity || eps[0].ServerName == "" {
		t.Fatalf("imported endpoints %+v; want the ready endpoint through each gateway, same name and identity", eps)
	}
	for _, bad := range []string{"192.0.2.10:4443,", "192.0.2.10:4443,192.0.2.11"} {
		out.Reset()
		errb.Reset()
		if code := run([]string{"gateway", "--discovery-file", file, "--export", "orders.shop", "--print-imports", bad}, &out, &errb); code != 1 {
			t.Errorf("--print-imports %q: exit %d, want 1", bad, code)
		}
	}
}
