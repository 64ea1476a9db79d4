package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown phase", []string{"--phases", "latency,soak"}, `unknown phase "soak"`},
		{"no rounds", []string{"--rounds", "0"}, "must be positive"},
		{"no flows", []string{"--flows", "0"}, "must be positive"},
		{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
		{"unknown flag", []string{"--frob"}, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := cliMain(context.Background(), tc.args, &out, &errb); code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, errb.String())
			}
			if !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("stderr %q, want it to say %q", errb.String(), tc.want)
			}
		})
	}
}

func TestGatewayMetric(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`# HELP quicmesh_gateway_flows Flows.
# TYPE quicmesh_gateway_flows gauge
quicmesh_gateway_flows{state="pending"} 3
quicmesh_gateway_flows{state="relayed"} 1001
quicmesh_gateway_flows_routed_total 1200
go_goroutines 1016
go_memstats_heap_inuse_bytes 6.6e+06
`))
	}))
	defer srv.Close()
	m := &mesh{gwAdmin: strings.TrimPrefix(srv.URL, "http://")}
	for _, tc := range []struct {
		name, label string
		want        float64
		err         bool
	}{
		{"quicmesh_gateway_flows", `state="relayed"`, 1001, false},
		{"quicmesh_gateway_flows", `state="pending"`, 3, false},
		{"quicmesh_gateway_flows_routed_total", "", 1200, false},
		{"go_memstats_heap_inuse_bytes", "", 6.6e6, false},
		{"go_goroutines", "", 1016, false},
		// A name that is only a prefix of others is not matched by them.
		{"quicmesh_gateway", "", 0, true},
		{"quicmesh_gateway_flows", `state="closed"`, 0, true},
	} {
		got, err := m.gatewayMetric(tc.name, tc.label)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("gatewayMetric(%q, %q) = %v, %v; want %v (error: %v)", tc.name, tc.label, got, err, tc.want, tc.err)
		}
	}
}
