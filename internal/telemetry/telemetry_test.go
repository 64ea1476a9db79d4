package telemetry_test

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/quicmesh/quicmesh/internal/telemetry"
)

func newMetrics(t testing.TB) (*telemetry.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return telemetry.New(reg), reg
}

// compare checks the exposition of the named metrics against want (HELP
// and TYPE lines are added from the registry, so want holds only samples).
func compare(t *testing.T, reg *prometheus.Registry, want string, names ...string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, n := range names {
			if mf.GetName() == n {
				fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", n, mf.GetHelp(), n, strings.ToLower(mf.GetType().String()))
			}
		}
	}
	// Samples for names without any series are simply absent.
	exp := b.String() + want
	if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), names...); err != nil {
		t.Error(err)
	}
}

func family(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func TestNewRegistersEverything(t *testing.T) {
	m, reg := newMetrics(t)
	m.RequestStarted(telemetry.Inbound, "a")
	m.ResponseDone(telemetry.Inbound, "p", "a", "h2", 200, "", "success", time.Millisecond)
	m.TCPOpen(telemetry.Outbound, "p", "a")(1, 1, "")
	m.HandshakeFailed(telemetry.Inbound, "untrusted")
	m.SetCertExpiry(time.Unix(1700000000, 0))
	m.LoadShed(telemetry.Inbound, "max_concurrency")
	m.AddQUICSource(func() []telemetry.QUICConn {
		return []telemetry.QUICConn{{Dir: telemetry.Outbound, Peer: "p", RTT: time.Millisecond}}
	})
	m.FellBack()
	m.Reprobed(true)
	m.AddConnSource(telemetry.Outbound, "tcp", func() int { return 1 })
	want := []string{
		"quicmesh_handshake_failures_total",
		"quicmesh_handshake_retries_total",
		"quicmesh_handshakes_in_progress",
		"quicmesh_identity_cert_expiry_timestamp_seconds",
		"quicmesh_load_shed_total",
		"quicmesh_mesh_connections",
		"quicmesh_quic_connections_open",
		"quicmesh_quic_packets_lost_total",
		"quicmesh_quic_packets_sent_total",
		"quicmesh_quic_smoothed_rtt_seconds",
		"quicmesh_quic_streams_open",
		"quicmesh_request_total",
		"quicmesh_response_latency_seconds",
		"quicmesh_response_total",
		"quicmesh_tcp_close_total",
		"quicmesh_tcp_open_connections",
		"quicmesh_tcp_open_total",
		"quicmesh_tcp_read_bytes_total",
		"quicmesh_tcp_write_bytes_total",
		"quicmesh_transport_fallbacks_total",
		"quicmesh_transport_reprobes_total",
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		got = append(got, mf.GetName())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("registered families:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n, err := testutil.GatherAndLint(reg); err != nil || len(n) > 0 {
		t.Errorf("lint: %v %v", n, err)
	}
}

func TestNewPanics(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	mustPanic("nil registerer", func() { telemetry.New(nil) })
	reg := prometheus.NewRegistry()
	telemetry.New(reg)
	mustPanic("registered twice", func() { telemetry.New(reg) })
	// Two Metrics on two registries are independent.
	a, ra := newMetrics(t)
	_, rb := newMetrics(t)
	a.RequestStarted(telemetry.Inbound, "x")
	if n, _ := testutil.GatherAndCount(rb, "quicmesh_request_total"); n != 0 {
		t.Errorf("registry b has %d request series", n)
	}
	if n, _ := testutil.GatherAndCount(ra, "quicmesh_request_total"); n != 1 {
		t.Errorf("registry a has %d request series", n)
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *telemetry.Metrics
	m.RequestStarted(telemetry.Inbound, "a")
	m.ResponseDone(telemetry.Inbound, "p", "a", "h2", 200, "", "success", time.Millisecond)
	m.TCPOpen(telemetry.Inbound, "p", "a")(1, 2, "")
	m.HandshakeFailed(telemetry.Inbound, "expired")
	m.SetCertExpiry(time.Now())
	m.LoadShed(telemetry.Inbound, "x")
	m.AddQUICSource(func() []telemetry.QUICConn { return nil })
}

func TestRequestsAndResponses(t *testing.T) {
	m, reg := newMetrics(t)
	m.RequestStarted(telemetry.Outbound, "echo")
	m.RequestStarted(telemetry.Outbound, "echo")
	m.RequestStarted(telemetry.Inbound, "web")

	m.ResponseDone(telemetry.Outbound, "10.0.0.1:4143", "echo", "h2", 200, "", "success", time.Millisecond)
	m.ResponseDone(telemetry.Outbound, "10.0.0.1:4143", "echo", "h2", 200, "", "success", time.Millisecond)
	m.ResponseDone(telemetry.Outbound, "10.0.0.2:4143", "echo", "grpc", 200, "14", "failure", time.Millisecond)
	m.ResponseDone(telemetry.Outbound, "10.0.0.2:4143", "echo", "grpc", 200, "0", "success", time.Millisecond)
	m.ResponseDone(telemetry.Inbound, "spiffe://cluster.local/ns/default/sa/web", "web", "h3", 503, "", "failure", time.Millisecond)
	m.ResponseDone(telemetry.Inbound, "spiffe://cluster.local/ns/default/sa/web", "web", "http1", 0, "", "failure", time.Millisecond)

	compare(t, reg, `
quicmesh_request_total{direction="inbound",service="web"} 1
quicmesh_request_total{direction="outbound",service="echo"} 2
quicmesh_response_total{classification="failure",direction="inbound",grpc_status="none",peer="spiffe://cluster.local/ns/default/sa/web",proto="h3",service="web",status_code="503"} 1
quicmesh_response_total{classification="failure",direction="inbound",grpc_status="none",peer="spiffe://cluster.local/ns/default/sa/web",proto="http1",service="web",status_code="unknown"} 1
quicmesh_response_total{classification="failure",direction="outbound",grpc_status="14",peer="10.0.0.2:4143",proto="grpc",service="echo",status_code="200"} 1
quicmesh_response_total{classification="success",direction="outbound",grpc_status="0",peer="10.0.0.2:4143",proto="grpc",service="echo",status_code="200"} 1
quicmesh_response_total{classification="success",direction="outbound",grpc_status="none",peer="10.0.0.1:4143",proto="h2",service="echo",status_code="200"} 2
`, "quicmesh_request_total", "quicmesh_response_total")

	// The histogram drops peer, status and grpc_status.
	if n, _ := testutil.GatherAndCount(reg, "quicmesh_response_latency_seconds"); n != 5 {
		t.Errorf("latency series = %d, want 5", n)
	}
}

func TestLatencyHistogram(t *testing.T) {
	m, reg := newMetrics(t)
	for _, d := range []time.Duration{75 * time.Microsecond, 3 * time.Millisecond, 3 * time.Millisecond, 20 * time.Second, -time.Second} {
		m.ResponseDone(telemetry.Inbound, "p", "svc", "h2", 200, "", "success", d)
	}
	mf := family(t, reg, "quicmesh_response_latency_seconds")
	if mf == nil || len(mf.Metric) != 1 {
		t.Fatalf("latency family = %v", mf)
	}
	h := mf.Metric[0].GetHistogram()
	wantBounds := []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10}
	if len(h.Bucket) != len(wantBounds) {
		t.Fatalf("%d buckets, want %d", len(h.Bucket), len(wantBounds))
	}
	// Cumulative counts: the negative duration counts as 0 (first bucket),
	// 75µs from the 100µs bucket, 3ms×2 from 5ms, 20s only in +Inf.
	for i, b := range h.Bucket {
		if b.GetUpperBound() != wantBounds[i] {
			t.Errorf("bucket %d bound %v, want %v", i, b.GetUpperBound(), wantBounds[i])
		}
		var want uint64
		switch ub := b.GetUpperBound(); {
		case ub >= 5e-3:
			want = 4
		case ub >= 100e-6:
			want = 2
		default:
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v count %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	if h.GetSampleCount() != 5 {
		t.Errorf("count %d", h.GetSampleCount())
	}
	if got, want := h.GetSampleSum(), 75e-6+6e-3+20; math.Abs(got-want) > 1e-9 {
		t.Errorf("sum %v, want %v", got, want)
	}
}

func TestTCP(t *testing.T) {
	m, reg := newMetrics(t)
	c1 := m.TCPOpen(telemetry.Outbound, "10.0.0.1:4143", "db")
	c2 := m.TCPOpen(telemetry.Outbound, "10.0.0.1:4143", "db")
	c3 := m.TCPOpen(telemetry.Inbound, "spiffe://td/web", "db")
	compare(t, reg, `
quicmesh_tcp_open_connections{direction="inbound",peer="spiffe://td/web",service="db"} 1
quicmesh_tcp_open_connections{direction="outbound",peer="10.0.0.1:4143",service="db"} 2
`, "quicmesh_tcp_open_connections")

	c1(100, 2000, "")
	c1(100, 2000, "") // ignored: each connection closes once
	c2(5, 0, "reset")
	c3(-1, 7, "") // negative byte counts are ignored, not a panic

	compare(t, reg, `
quicmesh_tcp_open_total{direction="inbound",peer="spiffe://td/web",service="db"} 1
quicmesh_tcp_open_total{direction="outbound",peer="10.0.0.1:4143",service="db"} 2
quicmesh_tcp_close_total{direction="inbound",error="none",peer="spiffe://td/web",service="db"} 1
quicmesh_tcp_close_total{direction="outbound",error="none",peer="10.0.0.1:4143",service="db"} 1
quicmesh_tcp_close_total{direction="outbound",error="reset",peer="10.0.0.1:4143",service="db"} 1
quicmesh_tcp_open_connections{direction="inbound",peer="spiffe://td/web",service="db"} 0
quicmesh_tcp_open_connections{direction="outbound",peer="10.0.0.1:4143",service="db"} 0
quicmesh_tcp_read_bytes_total{direction="inbound",peer="spiffe://td/web",service="db"} 0
quicmesh_tcp_read_bytes_total{direction="outbound",peer="10.0.0.1:4143",service="db"} 105
quicmesh_tcp_write_bytes_total{direction="inbound",peer="spiffe://td/web",service="db"} 7
quicmesh_tcp_write_bytes_total{direction="outbound",peer="10.0.0.1:4143",service="db"} 2000
`, "quicmesh_tcp_open_total", "quicmesh_tcp_close_total", "quicmesh_tcp_open_connections",
		"quicmesh_tcp_read_bytes_total", "quicmesh_tcp_write_bytes_total")
}

func TestHandshakeCertExpiryLoadShed(t *testing.T) {
	m, reg := newMetrics(t)
	m.HandshakeFailed(telemetry.Inbound, "untrusted")
	m.HandshakeFailed(telemetry.Inbound, "untrusted")
	m.HandshakeFailed(telemetry.Outbound, "wrong_id")
	m.HandshakeFailed(telemetry.Outbound, "")
	m.LoadShed(telemetry.Inbound, "max_streams")
	m.SetCertExpiry(time.Unix(1893456000, 500_000_000))
	compare(t, reg, `
quicmesh_handshake_failures_total{direction="inbound",reason="untrusted"} 2
quicmesh_handshake_failures_total{direction="outbound",reason="unknown"} 1
quicmesh_handshake_failures_total{direction="outbound",reason="wrong_id"} 1
quicmesh_load_shed_total{direction="inbound",reason="max_streams"} 1
quicmesh_identity_cert_expiry_timestamp_seconds 1.8934560005e+09
`, "quicmesh_handshake_failures_total", "quicmesh_load_shed_total", "quicmesh_identity_cert_expiry_timestamp_seconds")

	m.SetCertExpiry(time.Time{})
	compare(t, reg, `
quicmesh_identity_cert_expiry_timestamp_seconds 0
`, "quicmesh_identity_cert_expiry_timestamp_seconds")
}

func TestNormalisation(t *testing.T) {
	m, reg := newMetrics(t)
	long := strings.Repeat("x", 257)
	m.ResponseDone("sideways", "", "\xff\xfe", "", 42, "", "meh", time.Millisecond)
	m.ResponseDone(telemetry.Inbound, long, "svc", "h2", 700, "", "success", time.Millisecond)
	m.ResponseDone(telemetry.Inbound, strings.Repeat("y", 256), "svc", "h2", 599, "", "success", time.Millisecond)
	m.RequestStarted("", "")
	compare(t, reg, `
quicmesh_request_total{direction="unknown",service="unknown"} 1
quicmesh_response_total{classification="success",direction="inbound",grpc_status="none",peer="`+strings.Repeat("y", 256)+`",proto="h2",service="svc",status_code="599"} 1
quicmesh_response_total{classification="success",direction="inbound",grpc_status="none",peer="unknown",proto="h2",service="svc",status_code="unknown"} 1
quicmesh_response_total{classification="unknown",direction="unknown",grpc_status="none",peer="unknown",proto="unknown",service="unknown",status_code="unknown"} 1
`, "quicmesh_request_total", "quicmesh_response_total")
}

func TestOverflowLimiter(t *testing.T) {
	m, reg := newMetrics(t)
	for i := range 300 {
		svc := fmt.Sprintf("svc-%03d", i)
		m.RequestStarted(telemetry.Inbound, svc)
		m.RequestStarted(telemetry.Inbound, svc)
	}
	// The limit is per label dimension and shared: a service first seen
	// on another metric is still over it.
	m.TCPOpen(telemetry.Inbound, "p", "svc-299")(0, 0, "")
	// Admitted values keep working after the dimension is full.
	m.RequestStarted(telemetry.Inbound, "svc-000")
	// An explicit "overflow"/"unknown" passes through without a slot.
	m.RequestStarted(telemetry.Inbound, telemetry.Unknown)

	mf := family(t, reg, "quicmesh_request_total")
	got := map[string]float64{}
	for _, s := range mf.Metric {
		for _, l := range s.Label {
			if l.GetName() == "service" {
				got[l.GetValue()] = s.GetCounter().GetValue()
			}
		}
	}
	if len(got) != 256+2 {
		t.Errorf("%d service values exported, want 256 + overflow + unknown", len(got))
	}
	if got["svc-000"] != 3 || got["svc-255"] != 2 {
		t.Errorf("svc-000=%v svc-255=%v, want 3 and 2", got["svc-000"], got["svc-255"])
	}
	if _, ok := got["svc-256"]; ok {
		t.Error("svc-256 exported beyond the limit")
	}
	if got[telemetry.Overflow] != 2*44 {
		t.Errorf("overflow = %v, want %d", got[telemetry.Overflow], 2*44)
	}
	if got[telemetry.Unknown] != 1 {
		t.Errorf("unknown = %v, want 1", got[telemetry.Unknown])
	}
	compare(t, reg, `
quicmesh_tcp_open_total{direction="inbound",peer="p",service="overflow"} 1
`, "quicmesh_tcp_open_total")

	// grpc_status and error classes have their own, smaller limits.
	for i := range 40 {
		m.ResponseDone(telemetry.Inbound, "p", "svc-000", "grpc", 200, fmt.Sprint(i), "failure", 0)
		m.TCPOpen(telemetry.Inbound, "p", "svc-000")(0, 0, fmt.Sprintf("err%d", i))
	}
	// 32 values + overflow, plus the one close series from above for tcp.
	for name, want := range map[string]int{"quicmesh_response_total": 33, "quicmesh_tcp_close_total": 34} {
		if n, _ := testutil.GatherAndCount(reg, name); n != want {
			t.Errorf("%s: %d series, want %d", name, n, want)
		}
	}
}

func TestQUICSource(t *testing.T) {
	m, reg := newMetrics(t)
	var mu sync.Mutex
	conns := []telemetry.QUICConn{
		{Dir: telemetry.Outbound, Peer: "10.0.0.1:4143", RTT: 2 * time.Millisecond, PacketsLost: 3, PacketsSent: 100, StreamsOpen: 4},
		{Dir: telemetry.Outbound, Peer: "10.0.0.1:4143", RTT: 4 * time.Millisecond, PacketsLost: 1, PacketsSent: 50, StreamsOpen: 1},
		{Dir: telemetry.Inbound, Peer: "10.0.0.9:5555", RTT: 500 * time.Microsecond, PacketsLost: 0, PacketsSent: 10, StreamsOpen: 0},
	}
	m.AddQUICSource(func() []telemetry.QUICConn {
		mu.Lock()
		defer mu.Unlock()
		return append([]telemetry.QUICConn(nil), conns...)
	})
	m.AddQUICSource(func() []telemetry.QUICConn { return nil }) // several sources are merged
	set := func(c []telemetry.QUICConn) {
		mu.Lock()
		conns = c
		mu.Unlock()
	}
	names := []string{"quicmesh_quic_connections_open", "quicmesh_quic_smoothed_rtt_seconds",
		"quicmesh_quic_packets_lost_total", "quicmesh_quic_packets_sent_total", "quicmesh_quic_streams_open"}

	compare(t, reg, `
quicmesh_quic_connections_open{direction="inbound"} 1
quicmesh_quic_connections_open{direction="outbound"} 2
quicmesh_quic_smoothed_rtt_seconds{direction="inbound",peer="10.0.0.9:5555"} 0.0005
quicmesh_quic_smoothed_rtt_seconds{direction="outbound",peer="10.0.0.1:4143"} 0.003
quicmesh_quic_packets_lost_total{direction="inbound",peer="10.0.0.9:5555"} 0
quicmesh_quic_packets_lost_total{direction="outbound",peer="10.0.0.1:4143"} 4
quicmesh_quic_packets_sent_total{direction="inbound",peer="10.0.0.9:5555"} 10
quicmesh_quic_packets_sent_total{direction="outbound",peer="10.0.0.1:4143"} 150
quicmesh_quic_streams_open{direction="inbound",peer="10.0.0.9:5555"} 0
quicmesh_quic_streams_open{direction="outbound",peer="10.0.0.1:4143"} 5
`, names...)

	// The second outbound connection closes and the first keeps going.
	// The counters never go backwards: lost grows 4→5 (the closed
	// connection's share is absorbed by the survivor's growth, a known
	// undercount), sent would fall 150→120 and so stays at 150.
	set([]telemetry.QUICConn{
		{Dir: telemetry.Outbound, Peer: "10.0.0.1:4143", RTT: 2 * time.Millisecond, PacketsLost: 5, PacketsSent: 120, StreamsOpen: 2},
	})
	compare(t, reg, `
quicmesh_quic_connections_open{direction="inbound"} 0
quicmesh_quic_connections_open{direction="outbound"} 1
quicmesh_quic_smoothed_rtt_seconds{direction="outbound",peer="10.0.0.1:4143"} 0.002
quicmesh_quic_packets_lost_total{direction="outbound",peer="10.0.0.1:4143"} 5
quicmesh_quic_packets_sent_total{direction="outbound",peer="10.0.0.1:4143"} 150
quicmesh_quic_streams_open{direction="outbound",peer="10.0.0.1:4143"} 2
`, names...)

	// The inbound peer comes back with a new connection: its counters
	// continue from where they were.
	set([]telemetry.QUICConn{
		{Dir: telemetry.Inbound, Peer: "10.0.0.9:5555", RTT: time.Millisecond, PacketsLost: 2, PacketsSent: 7},
	})
	compare(t, reg, `
quicmesh_quic_connections_open{direction="inbound"} 1
quicmesh_quic_connections_open{direction="outbound"} 0
quicmesh_quic_smoothed_rtt_seconds{direction="inbound",peer="10.0.0.9:5555"} 0.001
quicmesh_quic_packets_lost_total{direction="inbound",peer="10.0.0.9:5555"} 2
quicmesh_quic_packets_sent_total{direction="inbound",peer="10.0.0.9:5555"} 17
quicmesh_quic_streams_open{direction="inbound",peer="10.0.0.9:5555"} 0
`, names...)
}

func TestQUICWithoutSources(t *testing.T) {
	_, reg := newMetrics(t)
	compare(t, reg, `
quicmesh_quic_connections_open{direction="inbound"} 0
quicmesh_quic_connections_open{direction="outbound"} 0
`, "quicmesh_quic_connections_open", "quicmesh_quic_smoothed_rtt_seconds")
}

func TestConcurrentUse(t *testing.T) {
	m, reg := newMetrics(t)
	m.AddQUICSource(func() []telemetry.QUICConn {
		return []telemetry.QUICConn{{Dir: telemetry.Inbound, Peer: "p", PacketsSent: 1}}
	})
	const workers, iters = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range iters {
				svc := fmt.Sprintf("svc-%d", i%5)
				peer := fmt.Sprintf("peer-%d", (i+w)%3)
				m.RequestStarted(telemetry.Outbound, svc)
				m.ResponseDone(telemetry.Outbound, peer, svc, "h2", 200, "", "success", time.Microsecond)
				done := m.TCPOpen(telemetry.Inbound, peer, svc)
				done(1, 2, "")
				if i%50 == 0 {
					m.HandshakeFailed(telemetry.Inbound, "expired")
					m.LoadShed(telemetry.Outbound, "queue_full")
					m.SetCertExpiry(time.Now())
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()

	sum := func(name string) float64 {
		var s float64
		for _, mt := range family(t, reg, name).Metric {
			s += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
		}
		return s
	}
	total := float64(workers * iters)
	for name, want := range map[string]float64{
		"quicmesh_request_total":            total,
		"quicmesh_response_total":           total,
		"quicmesh_tcp_open_total":           total,
		"quicmesh_tcp_close_total":          total,
		"quicmesh_tcp_open_connections":     0,
		"quicmesh_tcp_read_bytes_total":     total,
		"quicmesh_tcp_write_bytes_total":    2 * total,
		"quicmesh_handshake_failures_total": workers * iters / 50,
	} {
		if got := sum(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n, _ := testutil.GatherAndCount(reg, "quicmesh_response_total"); n != 15 {
		t.Errorf("response series = %d, want 15", n)
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	m, _ := newMetrics(t)
	peer, svc := "10.0.0.1:4143", "echo"
	m.ResponseDone(telemetry.Outbound, peer, svc, "h2", 200, "", "success", time.Millisecond)
	m.RequestStarted(telemetry.Outbound, svc)
	if n := testing.AllocsPerRun(100, func() {
		m.RequestStarted(telemetry.Outbound, svc)
		m.ResponseDone(telemetry.Outbound, peer, svc, "h2", 200, "", "success", time.Millisecond)
	}); n != 0 {
		t.Errorf("RequestStarted+ResponseDone allocate %v times per call", n)
	}
}

func BenchmarkResponseDone(b *testing.B) {
	m, _ := newMetrics(b)
	peer, svc := "10.0.0.1:4143", "echo"
	b.ReportAllocs()
	for b.Loop() {
		m.ResponseDone(telemetry.Outbound, peer, svc, "h2", 200, "", "success", 300*time.Microsecond)
	}
}

func BenchmarkResponseDoneParallel(b *testing.B) {
	m, _ := newMetrics(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ResponseDone(telemetry.Outbound, "10.0.0.1:4143", "echo", "grpc", 200, "0", "success", 300*time.Microsecond)
		}
	})
}

func BenchmarkTCPOpenClose(b *testing.B) {
	m, _ := newMetrics(b)
	b.ReportAllocs()
	for b.Loop() {
		m.TCPOpen(telemetry.Inbound, "10.0.0.1:4143", "db")(1024, 4096, "")
	}
}

// The transport metrics: connections summed per direction and transport
// over their sources, fallbacks and re-probes counted.
func TestTransportMetrics(t *testing.T) {
	m, reg := newMetrics(t)
	m.AddConnSource(telemetry.Outbound, "quic", func() int { return 2 })
	m.AddConnSource(telemetry.Outbound, "tcp", func() int { return 1 })
	m.AddConnSource(telemetry.Outbound, "tcp", func() int { return 3 })
	m.FellBack()
	m.FellBack()
	m.Reprobed(false)
	m.Reprobed(true)
	want := `
# HELP quicmesh_mesh_connections Live connections between sidecars, by direction and transport (quic, tcp).
# TYPE quicmesh_mesh_connections gauge
quicmesh_mesh_connections{direction="outbound",transport="quic"} 2
quicmesh_mesh_connections{direction="outbound",transport="tcp"} 4
# HELP quicmesh_transport_fallbacks_total Peers marked QUIC-blocked (QUIC dial failed while TCP worked) and moved to the TCP transport.
# TYPE quicmesh_transport_fallbacks_total counter
quicmesh_transport_fallbacks_total 2
# HELP quicmesh_transport_reprobes_total Background QUIC probes of QUIC-blocked peers, by result ("ok": the peer moved back to QUIC).
# TYPE quicmesh_transport_reprobes_total counter
quicmesh_transport_reprobes_total{result="failed"} 1
quicmesh_transport_reprobes_total{result="ok"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "quicmesh_mesh_connections", "quicmesh_transport_fallbacks_total", "quicmesh_transport_reprobes_total"); err != nil {
		t.Fatal(err)
	}
}
