package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/proxy/outbound"
)

// The "resilience" section of the config file: absent keys inherit, a
// present zero means none, and every bad value is one error naming its
// key.
func TestResilienceConfig(t *testing.T) {
	id := []string{"--cert", "w.crt", "--key", "w.key", "--bundle", "b.crt"}
	tests := []struct {
		name string
		file string
		want outbound.Resilience
		err  string
	}{
		{name: "absent", file: `{}`, want: outbound.Resilience{}},
		{name: "everything", file: `{"resilience": {
			"failure_accrual": {"consecutive_failures": 3, "min_ejection": "500ms", "max_ejection": "10s"},
			"default": {"timeout": "10s", "response_header_timeout": "5s", "max_pending": 100, "max_retries": 1,
				"retry_on": [503], "retry_grpc_methods": ["/a.B/*"], "retry_on_grpc": ["UNAVAILABLE"], "retry_body_bytes": 1024,
				"retry_budget": {"ratio": 0.1, "min_per_second": 5}},
			"services": {"web": {"timeout": "0s", "response_header_timeout": "0s", "max_pending": 0, "max_retries": 0, "retry_body_bytes": 0,
				"retry_budget": {"ratio": 0, "min_per_second": 0}}}}}`,
			want: outbound.Resilience{
				Accrual: balance.AccrualConfig{ConsecutiveFailures: 3, MinEjection: 500 * time.Millisecond, MaxEjection: 10 * time.Second},
				Default: outbound.ServicePolicy{Timeout: 10 * time.Second, ResponseHeaderTimeout: 5 * time.Second, MaxPending: 100, MaxRetries: 1,
					RetryOn: []int{503}, RetryGRPCMethods: []string{"/a.B/*"}, RetryOnGRPC: []string{"UNAVAILABLE"}, RetryBodyBytes: 1024, RetryBudget: outbound.RetryBudget{Ratio: 0.1, MinPerSecond: 5}},
				Services: map[string]outbound.ServicePolicy{"web": {Timeout: -1, ResponseHeaderTimeout: -1, MaxPending: -1, MaxRetries: -1, RetryBodyBytes: -1,
					RetryBudget: outbound.RetryBudget{Ratio: -1, MinPerSecond: -1}}},
			}},
		{name: "bad status", file: `{"resilience": {"services": {"web": {"retry_on": [302]}}}}`, err: `config "resilience.services.web": retry status 302`},
		{name: "bad method", file: `{"resilience": {"default": {"retry_grpc_methods": ["Get"]}}}`, err: `config "resilience.default": gRPC method "Get"`},
		{name: "bad gRPC status", file: `{"resilience": {"default": {"retry_on_grpc": ["GONE"]}}}`, err: `config "resilience.default": gRPC retry status "GONE"`},
		{name: "negative", file: `{"resilience": {"default": {"max_pending": -1}}}`, err: `config "resilience.default.max_pending": -1 is negative`},
		{name: "negative ratio", file: `{"resilience": {"default": {"retry_budget": {"ratio": -0.5}}}}`, err: `config "resilience.default.retry_budget.ratio"`},
		{name: "ejections", file: `{"resilience": {"failure_accrual": {"min_ejection": "2s", "max_ejection": "1s"}}}`, err: `config "resilience.failure_accrual.max_ejection"`},
		{name: "empty service", file: `{"resilience": {"services": {"": {}}}}`, err: "an empty service name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := mergeOptionsFrom(t, tt.file, id, "")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := o.sidecar.Outbound.Resilience; !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// A bad duration inside a service's policy names its key (the map is not
// reached by the generic duration check).
func TestResilienceConfigDurationKey(t *testing.T) {
	_, err := parseConfig([]byte(`{"resilience": {"services": {"web": {"timeout": "soon"}}}}`), "c.json")
	if err == nil || !strings.Contains(err.Error(), `"resilience.services.web.timeout"`) {
		t.Fatalf("error %v, want it to name resilience.services.web.timeout", err)
	}
}
