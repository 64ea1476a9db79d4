package outbound

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// skipResetStreams drops requests whose HTTP/2 stream the client reset
// before the handler started (Rapid Reset): no work upstream for a stream
// no one will read.
func skipResetStreams(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h2guard.StreamReset(r.Context()) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// loadShed answers 503 to requests beyond max in flight (max <= 0: no
// limit). One loadShed counts every listener of a proxy; a request counts
// until its handler returns, a CONNECT or upgrade for its tunnel's life.
type loadShed struct {
	max      int
	inflight atomic.Int64
	metrics  *telemetry.Metrics
	who      string
}

func (s *loadShed) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := s.inflight.Add(1); s.max > 0 && n > int64(s.max) {
			s.inflight.Add(-1)
			s.metrics.LoadShed(telemetry.Outbound, "max_in_flight")
			bridge.WriteError(w, r, bridge.Unavailable, s.who, fmt.Sprintf("overloaded: more than %d requests in flight", s.max))
			return
		}
		defer s.inflight.Add(-1)
		next.ServeHTTP(w, r)
	})
}
