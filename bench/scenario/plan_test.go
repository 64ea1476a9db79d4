package scenario

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

func TestBenchArgs(t *testing.T) {
	closed := Load{Proto: bench.ProtoHTTP1, Concurrency: 32, Duration: 8 * time.Second, Warmup: time.Second}
	got := closed.BenchArgs("127.0.0.1:8080", "out/x.json", []bench.Proc{{Name: "quicmesh-a", PID: 10}, {Name: "quicmesh-b", PID: 11}})
	want := []string{"--proto", "http1", "--target", "http://127.0.0.1:8080/", "--concurrency", "32",
		"--duration", "8s", "--warmup", "1s", "--json", "out/x.json", "--no-progress", "--quiet",
		"--pid", "quicmesh-a=10", "--pid", "quicmesh-b=11"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("closed loop:\n got %q\nwant %q", got, want)
	}
	open := Load{Proto: bench.ProtoTCP, Rate: 1000, Concurrency: 50, Connections: 4, Payload: 64,
		Duration: 5 * time.Second, Warmup: 500 * time.Millisecond, Timeout: 5 * time.Second}
	got = open.BenchArgs("127.0.0.1:9", "r.json", nil)
	want = []string{"--proto", "tcp", "--target", "127.0.0.1:9", "--rate", "1000", "--concurrency", "50",
		"--connections", "4", "--payload", "64", "--duration", "5s", "--warmup", "500ms", "--timeout", "5s",
		"--json", "r.json", "--no-progress", "--quiet"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("open loop:\n got %q\nwant %q", got, want)
	}
	// The arguments must be accepted by the real flag parser: a usage
	// error exits 2 and a bad value exits 1 before anything is dialed. Against a closed port the
	// run itself fails fast (exit 1) or completes with errors (exit 0).
	for _, l := range DefaultPlan().Loads {
		args := l.BenchArgs("127.0.0.1:1", "-", nil)
		for i, a := range args {
			if a == "--duration" {
				args[i+1] = "1ms"
			}
			if a == "--warmup" {
				args[i+1] = "0s"
			}
			if a == "--timeout" {
				args[i+1] = "100ms"
			}
		}
		var stderr strings.Builder
		// A configuration error (exit 1) names the flag at fault; a run
		// that could not reach the target does not.
		if code := bench.Main("quicmesh-dev bench", args, &strings.Builder{}, &stderr); code == 2 || (code == 1 && strings.Contains(stderr.String(), ": --")) {
			t.Errorf("%s: quicmesh bench rejects %q: %s", l.ID, args, stderr.String())
		}
	}
}

func TestLoadApp(t *testing.T) {
	for proto, app := range map[string]string{"http1": "http1", "h2c": "http1", "grpc": "grpc", "grpc-stream": "grpc", "tcp": "tcp", "tcp-bulk": "tcp"} {
		if got := (Load{Proto: proto}).App(); got != app {
			t.Errorf("%s: App() = %s, want %s", proto, got, app)
		}
	}
}

func TestFortioArgs(t *testing.T) {
	l := Load{Rate: 1000, Concurrency: 16, Duration: 10 * time.Second}
	got := FortioArgs(l, "http://127.0.0.1:8/", "f.json")
	want := []string{"load", "-qps", "1000", "-c", "16", "-uniform", "-t", "10s", "-r", "0.00001",
		"-loglevel", "Warning", "-json", "f.json", "http://127.0.0.1:8/"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestRotate(t *testing.T) {
	ts := []string{"a", "b", "c"}
	for round, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := Rotate(ts, round); !reflect.DeepEqual(got, want) {
			t.Errorf("Rotate(%d) = %v, want %v", round, got, want)
		}
	}
	if !reflect.DeepEqual(ts, []string{"a", "b", "c"}) {
		t.Error("Rotate modified its input")
	}
	if Rotate(nil, 3) != nil {
		t.Error("Rotate(nil) != nil")
	}
}

func TestPlans(t *testing.T) {
	p := DefaultPlan()
	// make bench must finish in 20 minutes on two cores, installs and
	// builds included: keep the measuring part well under that.
	if est := p.Estimate(); est > 15*time.Minute || est < 5*time.Minute {
		t.Errorf("default plan estimate %s, want 5-15 min", est)
	}
	ids := map[string]bool{}
	for _, l := range p.Loads {
		if ids[l.ID] {
			t.Errorf("duplicate load ID %s", l.ID)
		}
		ids[l.ID] = true
		if l.Duration <= 0 || l.Concurrency <= 0 || len(l.Targets) == 0 {
			t.Errorf("%s: incomplete load %+v", l.ID, l)
		}
		if l.Group == GroupLoopback && l.Targets[0] != Direct {
			t.Errorf("%s: direct must be a target to compute ratios", l.ID)
		}
	}
	for _, id := range []string{LoadHTTP1Max, LoadHTTP1Rate, LoadGRPCMax, LoadGRPCRate, LoadTCPRR, LoadTCPBulk, LoadLossyGRPC, LoadLossyTCP, LoadCrossCheck} {
		if !ids[id] {
			t.Errorf("default plan lacks %s", id)
		}
	}
	var loss2 bool
	for _, c := range p.Conds {
		loss2 = loss2 || (c.LossPct == 2 && c.Delay == 0)
	}
	if !loss2 {
		t.Error("no 2% loss condition: the loss goal cannot be checked")
	}

	q := QuickPlan()
	if est := q.Estimate(); est > 2*time.Minute {
		t.Errorf("quick plan estimate %s", est)
	}
	for _, l := range q.Loads {
		if l.Group != GroupLoopback || !reflect.DeepEqual(l.Targets, []string{Direct, Quicmesh}) || l.Duration > time.Second {
			t.Errorf("quick plan load %+v", l)
		}
	}

	only, err := p.Only([]string{LoadTCPBulk, " " + LoadHTTP1Max})
	if err != nil || len(only.Loads) != 2 || only.Loads[0].ID != LoadHTTP1Max || only.Loads[1].ID != LoadTCPBulk {
		t.Errorf("Only: %v %+v", err, only.Loads)
	}
	if _, err := p.Only([]string{"nope"}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Only(unknown) error = %v", err)
	}
}

// TestPlanTCPTransport: the TCP transport runs beside QUIC, in the same
// phase, in every load issue 13's record needs.
func TestPlanTCPTransport(t *testing.T) {
	p := DefaultPlan()
	for _, id := range []string{LoadHTTP1Max, LoadHTTP1Rate, LoadGRPCMax, LoadLossyGRPC, LoadLossyTCP} {
		l, ok := (&Results{Loads: p.Loads}).LoadByID(id)
		if !ok || !slices.Contains(l.Targets, Quicmesh) || !slices.Contains(l.Targets, QuicmeshTCP) {
			t.Errorf("%s: targets %v, want quicmesh and quicmesh-tcp", id, l.Targets)
		}
		if l.Group == GroupLoopback && !slices.Contains(l.Targets, HAProxyH2) {
			t.Errorf("%s: targets %v, want the haproxy HTTP/2 pair beside them", id, l.Targets)
		}
	}
}

func TestPlanWithTargets(t *testing.T) {
	p := DefaultPlan()
	got, err := p.WithTargets([]string{" direct", QuicmeshTCP, Quicmesh, "", QuicmeshTCP})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Loads) != len(p.Loads) {
		t.Errorf("%d loads kept, want all %d", len(got.Loads), len(p.Loads))
	}
	for i, l := range got.Loads {
		var want []string
		switch l.Group {
		case GroupLoopback:
			want = []string{Direct, QuicmeshTCP, Quicmesh}
		case GroupLossy:
			want = []string{QuicmeshTCP, Quicmesh}
		default:
			want = p.Loads[i].Targets
		}
		if !reflect.DeepEqual(l.Targets, want) {
			t.Errorf("%s: targets %v, want %v", l.ID, l.Targets, want)
		}
	}
	// TCP loads get the TCP transport too (its CONNECT tunnels).
	if l, _ := (&Results{Loads: got.Loads}).LoadByID(LoadTCPBulk); !slices.Contains(l.Targets, QuicmeshTCP) {
		t.Errorf("tcp-bulk targets %v", l.Targets)
	}
	// The receiver's loads are not modified.
	if !reflect.DeepEqual(p.Loads, DefaultPlan().Loads) {
		t.Error("WithTargets modified its receiver")
	}
	// Direct only: the lossy loads have nothing left and are dropped.
	d, err := p.WithTargets([]string{Direct})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range d.Loads {
		if l.Group == GroupLossy {
			t.Errorf("lossy load %s kept with targets %v", l.ID, l.Targets)
		}
	}
	if _, err := p.WithTargets([]string{Quicmesh, "envoy", "linkerd"}); err == nil || !strings.HasPrefix(err.Error(), `unknown target "envoy", "linkerd"`) {
		t.Errorf("unknown targets: %v", err)
	}
}

func TestPlanOnlyConds(t *testing.T) {
	p := DefaultPlan()
	c, err := p.OnlyConds([]string{"2% loss", "0% loss"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Conds) != 2 || c.Conds[0].LossPct != 0 || c.Conds[1].LossPct != 2 || c.Conds[1].Delay != 0 {
		t.Errorf("conditions %+v", c.Conds)
	}
	if len(p.Conds) != 5 {
		t.Error("OnlyConds modified its receiver")
	}
	if c.Estimate() >= p.Estimate() {
		t.Errorf("two conditions estimated %s, all five %s", c.Estimate(), p.Estimate())
	}
	if _, err := p.OnlyConds([]string{"2%"}); err == nil || err.Error() != `unknown condition "2%"` {
		t.Errorf("unknown condition: %v", err)
	}
}
