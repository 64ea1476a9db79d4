package outbound

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestLoadShed(t *testing.T) {
	tests := []struct {
		name     string
		max      int
		inflight int64 // already in flight
		want     int
	}{
		{"below", 2, 1, 200},
		{"at the limit", 2, 2, 503},
		{"disabled", -1, 1 << 20, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &loadShed{max: tt.max, who: "outbound test"}
			s.inflight.Store(tt.inflight)
			var during int64
			h := s.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { during = s.inflight.Load() }))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d", rec.Code, tt.want)
			}
			if tt.want == 200 && during != tt.inflight+1 {
				t.Errorf("in flight during the request %d, want %d", during, tt.inflight+1)
			}
			if s.inflight.Load() != tt.inflight {
				t.Errorf("in flight after the request %d, want %d", s.inflight.Load(), tt.inflight)
			}
		})
	}
}
