package outbound

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// Every routed request is counted once, labelled by the peer it reached
// (none when it reached none) and by the response the app got.
func TestMeasured(t *testing.T) {
	peer := &fakeConn{peer: identity.MustParseID("spiffe://test/ns/x/sa/api")}
	tests := []struct {
		name   string
		o      outcome
		labels map[string]string
	}{
		{"forwarded", outcome{res: bridge.Result{Status: 200}, peer: peer},
			map[string]string{"peer": "spiffe://test/ns/x/sa/api", "service": "web", "status_code": "200", "classification": "success"}},
		{"no peer", outcome{res: bridge.Result{Status: 503}},
			map[string]string{"service": "web", "status_code": "503", "classification": "failure"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := measured{metrics: telemetry.New(reg), next: stageFunc(func(http.ResponseWriter, *http.Request, target) outcome { return tt.o })}
			m.serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), target{service: "web", authority: "web"})
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			found := 0
			for _, mf := range mfs {
				if mf.GetName() != "quicmesh_response_total" {
					continue
				}
				for _, mt := range mf.GetMetric() {
					got := map[string]string{}
					for _, l := range mt.GetLabel() {
						got[l.GetName()] = l.GetValue()
					}
					for k, v := range tt.labels {
						if got[k] != v {
							t.Errorf("label %s = %q, want %q (all: %v)", k, got[k], v, got)
						}
					}
					found += int(mt.GetCounter().GetValue())
				}
			}
			if found != 1 {
				t.Fatalf("counted %d responses, want 1", found)
			}
		})
	}
}
