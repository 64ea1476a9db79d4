package bench

import (
	"context"
	"math"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

func startEcho(t *testing.T, kind string) *echo.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case "http1":
		return echo.StartHTTP1(ln)
	case "h2c":
		return echo.StartH2C(ln)
	case "grpc":
		return echo.StartGRPC(ln)
	case "tcp":
		return echo.StartTCP(ln)
	}
	t.Fatalf("unknown echo kind %q", kind)
	return nil
}

// runMeasured runs cfg for 300ms, and again for longer if nothing at all
// was measured: the shared 2-core machines this runs on can stall a
// process for several hundred milliseconds.
func runMeasured(t *testing.T, cfg Config) *Result {
	t.Helper()
	var r *Result
	for _, d := range []time.Duration{300 * time.Millisecond, time.Second, 3 * time.Second} {
		cfg.Duration = d
		var err error
		r, err = Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests > 0 {
			return r
		}
		t.Logf("nothing measured in %v (process starved?); retrying for longer", d)
	}
	return r
}

var smokeCases = []struct {
	proto, server string
	rate          float64
	payload       int
}{
	{ProtoHTTP1, "http1", 0, 0},
	{ProtoHTTP1, "http1", 500, 1000},
	{ProtoH2C, "h2c", 0, 0},
	{ProtoH2C, "h2c", 500, 1000},
	{ProtoGRPC, "grpc", 0, 100},
	{ProtoGRPC, "grpc", 500, 0},
	{ProtoGRPCStream, "grpc", 0, 100},
	{ProtoGRPCStream, "grpc", 500, 100},
	{ProtoTCP, "tcp", 0, 0},
	{ProtoTCP, "tcp", 500, 512},
	{ProtoTCPBulk, "tcp", 0, 0},
}

func TestSmoke(t *testing.T) {
	base := testkit.TakeBaseline()
	for _, tc := range smokeCases {
		model := "closed"
		if tc.rate > 0 {
			model = "open"
		}
		t.Run(tc.proto+"/"+model, func(t *testing.T) {
			srv := startEcho(t, tc.server)
			defer srv.Close()
			r := runMeasured(t, Config{
				Proto:       tc.proto,
				Target:      srv.URL(),
				Rate:        tc.rate,
				Warmup:      50 * time.Millisecond,
				Concurrency: 4,
				Connections: 2,
				Payload:     tc.payload,
			})
			if r.Requests == 0 || r.ErrorTotal != 0 || len(r.Errors) != 0 {
				t.Fatalf("requests %d, errors %v, unsent %d", r.Requests, r.Errors, r.Unsent)
			}
			if r.LatencyUS.P50 == 0 && r.LatencyUS.Max == 0 {
				t.Errorf("no latency recorded: %+v", r.LatencyUS)
			}
			if g := r.Generator; runtime.GOOS == "linux" && (g == nil || g.CPUs < 1 || g.CPUMicrosPerRequest <= 0) {
				t.Errorf("generator CPU not reported: %+v", g)
			}
			if r.Model != model {
				t.Errorf("model = %q", r.Model)
			}
			if tc.rate > 0 {
				// Every slot of the window (150 in 300ms at 500 req/s) is
				// either sent or reported unsent.
				slots := int64(math.Round(tc.rate * r.DurationS))
				if r.Requests+r.Unsent != slots {
					t.Errorf("open loop: %d requests + %d unsent, want %d slots", r.Requests, r.Unsent, slots)
				}
			}
			if (tc.proto == ProtoTCP || tc.proto == ProtoTCPBulk) && r.BytesPerSecond <= 0 {
				t.Errorf("bytes_per_second = %v", r.BytesPerSecond)
			}
			t.Logf("%s %s: %d req, %.0f rps, p50 %dµs p99 %dµs, %.0f B/s",
				tc.proto, model, r.Requests, r.RPS, r.LatencyUS.P50, r.LatencyUS.P99, r.BytesPerSecond)
		})
	}
	base.Check(t)
}

// TestTargetDown runs every protocol against a closed port: the run must
// end on time with the failures counted by kind.
func TestTargetDown(t *testing.T) {
	base := testkit.TakeBaseline()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	want := map[string]string{
		ProtoHTTP1:      ErrConnRefused,
		ProtoH2C:        ErrConnRefused,
		ProtoGRPC:       "grpc_UNAVAILABLE",
		ProtoGRPCStream: "grpc_UNAVAILABLE",
		ProtoTCP:        ErrConnRefused,
		ProtoTCPBulk:    ErrConnRefused,
	}
	for _, proto := range Protocols {
		for _, rate := range []float64{0, 200} {
			if proto == ProtoTCPBulk && rate > 0 {
				continue
			}
			target := addr
			if proto == ProtoHTTP1 || proto == ProtoH2C {
				target = "http://" + addr + "/"
			}
			start := time.Now()
			r := runMeasured(t, Config{
				Proto: proto, Target: target, Rate: rate, Concurrency: 2, Timeout: time.Second,
			})
			if el := time.Since(start); el > 3*time.Second+time.Duration(r.DurationS*float64(time.Second)) {
				t.Errorf("%s rate %v: took %v", proto, rate, el)
			}
			if r.ErrorTotal == 0 || r.Errors[want[proto]] != r.ErrorTotal {
				t.Errorf("%s rate %v: errors %v, want all %s", proto, rate, r.Errors, want[proto])
			}
			if r.Requests != r.ErrorTotal || r.LatencyUS.Max != 0 {
				t.Errorf("%s: requests %d, errors %d, latency %+v", proto, r.Requests, r.ErrorTotal, r.LatencyUS)
			}
		}
	}
	base.Check(t)
}
