package dns

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const (
	idEcho  = "spiffe://test.local/ns/default/sa/echo"
	idOther = "spiffe://test.local/ns/default/sa/other"
	srvEcho = "_quicmesh._udp.echo.mesh.test."
)

func newTestResolver(t *testing.T, f *fakeServer, opts Options) (*Resolver, *testkit.LogBuffer) {
	t.Helper()
	logs := &testkit.LogBuffer{}
	opts.Zone = "mesh.test"
	opts.Nameservers = []string{f.addr}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, logs
}

// first resolves service and returns the first update's endpoints.
func first(t *testing.T, r *Resolver, service string) ([]discovery.Endpoint, discovery.Watch, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := r.Resolve(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { w.Close() })
	u, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("first Next: %v", err)
	}
	if u.Kind != discovery.Reset {
		t.Fatalf("first update is %v, want reset", u.Kind)
	}
	return u.Endpoints, w, nil
}

func ep(addr, id string, weight uint32) discovery.Endpoint {
	return discovery.Endpoint{Addr: addr, Identity: id, Weight: weight}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		zone    string
		service string
		opts    Options
		misbe   func(f *fakeServer)
		want    []discovery.Endpoint
		refused map[string]float64 // reason → count
		failed  string             // failure kind counted
		wantErr error
	}{
		{
			name: "identity at the target, A and AAAA",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 1 4143 a.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN AAAA ::1
				a.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 50), ep("[::1]:4143", idEcho, 50)},
		},
		{
			name: "identity at the service name; the target's wins",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4144 b.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2
				b.mesh.test. 30 IN A 127.0.0.3
				b.mesh.test. 30 IN TXT "spiffe=` + idOther + `"`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 1), ep("127.0.0.3:4144", idOther, 1)},
		},
		{
			name: "unrelated TXT records are ignored; a split ID is joined",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN TXT "v=spf1 -all"
				a.mesh.test. 30 IN TXT "SPIFFE=spiffe://test.local/ns/" "default/sa/echo"`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 1)},
		},
		{
			name: "missing TXT: not served",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4144 b.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				b.mesh.test. 30 IN A 127.0.0.3
				b.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			want:    []discovery.Endpoint{ep("127.0.0.3:4144", idEcho, 1)},
			refused: map[string]float64{refusedNoIdentity: 1},
		},
		{
			name: "bad TXT at the target is not overridden by the service's",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN TXT "spiffe=spiffe://Test.local/x"`,
			want:    nil,
			refused: map[string]float64{refusedBadIdentity: 1},
		},
		{
			name: "two TXT records disagree",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN TXT "spiffe=` + idOther + `"`,
			refused: map[string]float64{refusedBadIdentity: 1},
		},
		{
			name: "bad TXT at the service name",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + ` "
				a.mesh.test. 30 IN A 127.0.0.2`,
			refused: map[string]float64{refusedBadIdentity: 1},
		},
		{
			name: "weights in proportion; weight 0 is the smallest",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 3 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 1 4143 b.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 c.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2
				b.mesh.test. 30 IN A 127.0.0.3
				c.mesh.test. 30 IN A 127.0.0.4`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 300), ep("127.0.0.3:4143", idEcho, 100), ep("127.0.0.4:4143", idEcho, 1)},
		},
		{
			name: "only the lowest priority group",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 10 1 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 20 1 4143 b.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2
				b.mesh.test. 30 IN A 127.0.0.3`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 100)},
		},
		{
			name: "the next priority group when the lowest yields nothing",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 10 1 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 20 1 4143 b.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				b.mesh.test. 30 IN A 127.0.0.3`,
			want:    []discovery.Endpoint{ep("127.0.0.3:4143", idEcho, 100)},
			refused: map[string]float64{refusedNoAddress: 1},
		},
		{
			name: "port 0 and target . are refused",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 1 0 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 1 4143 .
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2`,
			refused: map[string]float64{refusedBadRecord: 2},
		},
		{
			name: "a lone target . means not available",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 0 .`,
		},
		{
			name: "CNAME target is followed",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 alias.mesh.test.
				alias.mesh.test. 30 IN CNAME a.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			want: []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 1)},
		},
		{
			name: "SRV records beyond MaxEndpoints",
			opts: Options{MaxEndpoints: 2},
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 5 4143 a.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 4 4143 b.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 3 4143 c.mesh.test.
				_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"
				a.mesh.test. 30 IN A 127.0.0.2
				b.mesh.test. 30 IN A 127.0.0.3
				c.mesh.test. 30 IN A 127.0.0.4`,
			want:    []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 500), ep("127.0.0.3:4143", idEcho, 400)},
			refused: map[string]float64{refusedOverLimit: 1},
		},
		{
			name: "truncated over UDP: asked again over TCP",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				a.mesh.test. 30 IN A 127.0.0.2
				a.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			misbe: func(f *fakeServer) { f.truncate[srvEcho+" SRV"] = true; f.truncate["a.mesh.test. TXT"] = true },
			want:  []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 1)},
		},
		{
			name:    "NXDOMAIN: unknown service",
			zone:    `other.mesh.test. 30 IN A 127.0.0.2`,
			wantErr: discovery.ErrUnknownService,
		},
		{
			name:    "NODATA: unknown service",
			zone:    `_quicmesh._udp.echo.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			wantErr: discovery.ErrUnknownService,
		},
		{
			name:    "invalid service name: unknown, nothing asked",
			service: "Echo:80",
			wantErr: discovery.ErrUnknownService,
		},
		{
			name:    "SERVFAIL",
			zone:    `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.`,
			misbe:   func(f *fakeServer) { f.rcode[srvEcho+" SRV"] = 2 },
			failed:  failServfail,
			wantErr: errLookup,
		},
		{
			name: "SERVFAIL for a target",
			zone: `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.
				a.mesh.test. 30 IN TXT "spiffe=` + idEcho + `"`,
			misbe:   func(f *fakeServer) { f.rcode["a.mesh.test. AAAA"] = 2 },
			failed:  failServfail,
			wantErr: errLookup,
		},
		{
			name:    "answer to another question",
			zone:    `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.`,
			misbe:   func(f *fakeServer) { f.wrongQ[srvEcho+" SRV"] = true },
			failed:  failMalformed,
			wantErr: errLookup,
		},
		{
			name:    "timeout",
			opts:    Options{Timeout: 200 * time.Millisecond},
			zone:    `_quicmesh._udp.echo.mesh.test. 30 IN SRV 0 0 4143 a.mesh.test.`,
			misbe:   func(f *fakeServer) { f.drop[srvEcho+" SRV"] = true },
			failed:  failTimeout,
			wantErr: errLookup,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.zone)
			if tt.misbe != nil {
				f.misbehave(tt.misbe)
			}
			r, logs := newTestResolver(t, f, tt.opts)
			service := tt.service
			if service == "" {
				service = "echo"
			}
			got, _, err := first(t, r, service)
			switch {
			case tt.wantErr == errLookup:
				var le *lookupError
				if !errors.As(err, &le) || errors.Is(err, discovery.ErrUnknownService) {
					t.Fatalf("error %v, want a lookup error", err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("endpoints\n got %v\nwant %v", got, tt.want)
			}
			for _, reason := range refusalReasons {
				if n := testutil.ToFloat64(r.refused.WithLabelValues(reason)); n != tt.refused[reason] {
					t.Errorf("refused{reason=%q} = %v, want %v", reason, n, tt.refused[reason])
				}
			}
			if len(tt.refused) > 0 && logs.Count("SRV record not served") == 0 {
				t.Errorf("no log line for the refused record:\n%s", logs)
			}
			for _, kind := range failKinds {
				want := 0.0
				if kind == tt.failed {
					want = 1
				}
				if n := testutil.ToFloat64(r.failures.WithLabelValues(kind)); n != want {
					t.Errorf("failures{reason=%q} = %v, want %v", kind, n, want)
				}
			}
			if tt.service != "" {
				select {
				case q := <-f.queries:
					t.Errorf("an invalid service name was asked: %s", q)
				default:
				}
			}
		})
	}
}

// errLookup in a test table means "a *lookupError, not an unknown service".
var errLookup = errors.New("lookup error")

func TestRefreshIntervals(t *testing.T) {
	r := &Resolver{opts: Options{MinTTL: 2 * time.Second, MaxTTL: time.Minute}}
	for _, tt := range []struct {
		ttl  uint32
		want time.Duration
	}{{0, 2 * time.Second}, {1, 2 * time.Second}, {5, 5 * time.Second}, {60, time.Minute}, {86400, time.Minute}, {^uint32(0), time.Minute}} {
		if got := r.refreshAfter(tt.ttl); got != tt.want {
			t.Errorf("refreshAfter(%d) = %v, want %v", tt.ttl, got, tt.want)
		}
	}
	for _, tt := range []struct {
		min, max time.Duration
		n        int
		want     time.Duration
	}{
		{time.Second, time.Minute, 1, time.Second},
		{time.Second, time.Minute, 2, 2 * time.Second},
		{time.Second, time.Minute, 5, 16 * time.Second},
		{time.Second, time.Minute, 6, 30 * time.Second},
		{time.Second, time.Minute, 1000, 30 * time.Second},
		{time.Second, 3 * time.Second, 3, 3 * time.Second},
		{time.Minute, 5 * time.Minute, 4, time.Minute},
	} {
		r := &Resolver{opts: Options{MinTTL: tt.min, MaxTTL: tt.max}}
		if got := r.retryAfter(tt.n); got != tt.want {
			t.Errorf("retryAfter(%d) with [%v, %v] = %v, want %v", tt.n, tt.min, tt.max, got, tt.want)
		}
	}
}

// The time between refreshes follows the TTLs, clamped: the lower bound is
// checked on the clock (load can only make refreshes later), the upper
// one by a refresh happening at all long before the unclamped TTL.
func TestRefreshFollowsClampedTTL(t *testing.T) {
	const clamp = 300 * time.Millisecond
	tests := []struct {
		name string
		ttl  string
		opts Options
	}{
		{"TTL 0 raised to MinTTL", "0", Options{MinTTL: clamp, MaxTTL: time.Hour}},
		{"TTL of a day cut to MaxTTL", "86400", Options{MinTTL: 10 * time.Millisecond, MaxTTL: clamp}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, `_quicmesh._udp.echo.mesh.test. `+tt.ttl+` IN SRV 0 0 4143 a.mesh.test.
				a.mesh.test. `+tt.ttl+` IN A 127.0.0.2
				a.mesh.test. `+tt.ttl+` IN TXT "spiffe=`+idEcho+`"`)
			r, _ := newTestResolver(t, f, tt.opts)
			events := refreshEvents(r)
			start := time.Now()
			if _, _, err := first(t, r, "echo"); err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 3; i++ {
				if err := waitRefresh(t, events); err != nil {
					t.Fatalf("refresh %d: %v", i, err)
				}
				if d := time.Since(start); d < time.Duration(i)*clamp {
					t.Fatalf("refresh %d after %v, want at least %v", i, d, time.Duration(i)*clamp)
				}
			}
		})
	}
}

// A failed refresh keeps the last set, is logged once per distinct
// failure, counted every time, and recovery resumes updates.
func TestFailureKeepsLastAnswer(t *testing.T) {
	const zone = `_quicmesh._udp.echo.mesh.test. 0 IN SRV 0 0 4143 a.mesh.test.
		a.mesh.test. 0 IN A 127.0.0.2
		a.mesh.test. 0 IN TXT "spiffe=` + idEcho + `"`
	tests := []struct {
		name    string
		kind    string
		breakIt func(f *fakeServer)
		heal    func(f *fakeServer)
	}{
		{"SERVFAIL for the service", failServfail,
			func(f *fakeServer) { f.rcode[srvEcho+" SRV"] = 2 }, func(f *fakeServer) { delete(f.rcode, srvEcho+" SRV") }},
		{"REFUSED for a target", failRefused,
			func(f *fakeServer) { f.rcode["a.mesh.test. A"] = 5 }, func(f *fakeServer) { delete(f.rcode, "a.mesh.test. A") }},
		{"timeout for a target's TXT", failTimeout,
			func(f *fakeServer) { f.drop["a.mesh.test. TXT"] = true }, func(f *fakeServer) { delete(f.drop, "a.mesh.test. TXT") }},
		{"truncated over TCP too", failTruncated,
			func(f *fakeServer) { f.truncTCP[srvEcho+" SRV"] = true }, func(f *fakeServer) { delete(f.truncTCP, srvEcho+" SRV") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, zone)
			r, logs := newTestResolver(t, f, Options{MinTTL: 20 * time.Millisecond, MaxTTL: 40 * time.Millisecond, Timeout: 200 * time.Millisecond})
			events := refreshEvents(r)
			eps, w, err := first(t, r, "echo")
			if err != nil || len(eps) != 1 {
				t.Fatalf("first: %v %v", eps, err)
			}
			f.misbehave(tt.breakIt)
			for range 3 {
				for waitRefresh(t, events) == nil {
				}
			}
			if n := testutil.ToFloat64(r.failures.WithLabelValues(tt.kind)); n < 3 {
				t.Errorf("failures{reason=%q} = %v, want at least 3", tt.kind, n)
			}
			if n := logs.Count("refresh failed"); n != 1 {
				t.Errorf("%d failure log lines for one distinct failure, want 1:\n%s", n, logs)
			}
			if n := testutil.ToFloat64(r.stale); n != 1 {
				t.Errorf("stale watches = %v, want 1", n)
			}
			expectNoUpdate(t, w)

			// Heal and change the set: the change arrives.
			f.misbehave(tt.heal)
			f.set(t, strings.ReplaceAll(zone, "127.0.0.2", "127.0.0.3"))
			u, err := nextWithin(w, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if want := []discovery.Endpoint{ep("127.0.0.3:4143", idEcho, 1)}; !reflect.DeepEqual(u.Endpoints, want) {
				t.Fatalf("after recovery: %v, want %v", u.Endpoints, want)
			}
			if n := logs.Count("refresh recovered"); n != 1 {
				t.Errorf("%d recovery log lines, want 1", n)
			}
			if n := testutil.ToFloat64(r.stale); n != 0 {
				t.Errorf("stale watches = %v after recovery, want 0", n)
			}
		})
	}
}

// An authoritative "no such name" for a service that existed empties its
// set (the watch stays open); records coming back refill it.
func TestServiceRemovedAndBack(t *testing.T) {
	const zone = `_quicmesh._udp.echo.mesh.test. 0 IN SRV 0 0 4143 a.mesh.test.
		a.mesh.test. 0 IN A 127.0.0.2
		a.mesh.test. 0 IN TXT "spiffe=` + idEcho + `"`
	f := startFake(t, zone)
	r, logs := newTestResolver(t, f, Options{MinTTL: 20 * time.Millisecond, MaxTTL: 40 * time.Millisecond})
	_, w, err := first(t, r, "echo")
	if err != nil {
		t.Fatal(err)
	}
	f.set(t, "")
	u, err := nextWithin(w, 30*time.Second)
	if err != nil || u.Kind != discovery.Reset || len(u.Endpoints) != 0 {
		t.Fatalf("after NXDOMAIN: %+v %v, want an empty reset", u, err)
	}
	if logs.Count("no SRV records any more") != 1 {
		t.Errorf("the removal is not logged:\n%s", logs)
	}
	f.set(t, zone)
	u, err = nextWithin(w, 30*time.Second)
	if err != nil || len(u.Endpoints) != 1 {
		t.Fatalf("after the records came back: %+v %v", u, err)
	}
}

// Adding an SRV record is seen at the next refresh; a refresh with no
// change yields no update.
func TestAddedRecordAndNoSpuriousUpdates(t *testing.T) {
	const zone = `_quicmesh._udp.echo.mesh.test. 0 IN SRV 0 0 4143 a.mesh.test.
		_quicmesh._udp.echo.mesh.test. 0 IN TXT "spiffe=` + idEcho + `"
		a.mesh.test. 0 IN A 127.0.0.2
		b.mesh.test. 0 IN A 127.0.0.3`
	f := startFake(t, zone)
	r, _ := newTestResolver(t, f, Options{MinTTL: 20 * time.Millisecond, MaxTTL: 40 * time.Millisecond})
	events := refreshEvents(r)
	_, w, err := first(t, r, "echo")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := waitRefresh(t, events); err != nil {
			t.Fatal(err)
		}
	}
	expectNoUpdate(t, w)
	f.set(t, zone+"\n_quicmesh._udp.echo.mesh.test. 0 IN SRV 0 0 4143 b.mesh.test.")
	u, err := nextWithin(w, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 1), ep("127.0.0.3:4143", idEcho, 1)}; !reflect.DeepEqual(u.Endpoints, want) {
		t.Fatalf("got %v, want %v", u.Endpoints, want)
	}
}

func TestCloseEndsWatches(t *testing.T) {
	f := startFake(t, `_quicmesh._udp.echo.mesh.test. 0 IN SRV 0 0 4143 a.mesh.test.
		a.mesh.test. 0 IN A 127.0.0.2
		a.mesh.test. 0 IN TXT "spiffe=`+idEcho+`"`)
	r, _ := newTestResolver(t, f, Options{MinTTL: 10 * time.Millisecond, MaxTTL: 10 * time.Millisecond})
	_, w, err := first(t, r, "echo")
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := w.Next(context.Background()); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Next after Close: %v, want ErrClosed", err)
	}
	if _, err := r.Resolve(context.Background(), "echo"); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Resolve after Close: %v, want ErrClosed", err)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		resolv  string
		want    []string // nameservers
		wantErr string
	}{
		{name: "bare IPs get port 53", opts: Options{Zone: "Mesh.Test.", Nameservers: []string{"127.0.0.1", "::1", "[::1]:5353"}},
			want: []string{"127.0.0.1:53", "[::1]:53", "[::1]:5353"}},
		{name: "resolv.conf", opts: Options{Zone: "mesh.test"}, resolv: "search example.org\nnameserver 10.0.0.1\nnameserver fd00::1\n",
			want: []string{"10.0.0.1:53", "[fd00::1]:53"}},
		{name: "resolv.conf without nameserver", opts: Options{Zone: "mesh.test"}, resolv: "search example.org\n", wantErr: "lists no nameserver"},
		{name: "no zone", opts: Options{Nameservers: []string{"127.0.0.1"}}, wantErr: "dns: no zone"},
		{name: "bad zone", opts: Options{Zone: "mesh..test"}, wantErr: `dns: zone "mesh..test": empty or over-long label`},
		{name: "host name nameserver", opts: Options{Zone: "m", Nameservers: []string{"dns.google:53"}}, wantErr: `dns: nameserver "dns.google:53": want IP or IP:PORT`},
		{name: "min above max", opts: Options{Zone: "m", Nameservers: []string{"127.0.0.1"}, MinTTL: time.Minute, MaxTTL: time.Second}, wantErr: "dns: min TTL 1m0s is above max TTL 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.resolv != "" {
				p := t.TempDir() + "/resolv.conf"
				if err := os.WriteFile(p, []byte(tt.resolv), 0o644); err != nil {
					t.Fatal(err)
				}
				tt.opts.ResolvConf = p
			}
			r, err := New(tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if got := r.Nameservers(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("nameservers %v, want %v", got, tt.want)
			}
			if got := r.SRVName("echo"); got != "_quicmesh._udp.echo.mesh.test." {
				t.Errorf("SRV name %q", got)
			}
		})
	}
}

func nextWithin(w discovery.Watch, d time.Duration) (discovery.Update, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return w.Next(ctx)
}

// expectNoUpdate checks that no update is pending now.
func expectNoUpdate(t *testing.T, w discovery.Watch) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if u, err := w.Next(ctx); err == nil {
		t.Fatalf("unexpected update %+v", u)
	}
}
