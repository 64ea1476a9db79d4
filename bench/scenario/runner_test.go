package scenario

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestCountProto(t *testing.T) {
	p := filepath.Join(t.TempDir(), "access.log")
	log := `{"level":"info","logger":"http.log.access","msg":"handled request","request":{"proto":"HTTP/3.0","method":"GET"},"status":200}
{"level":"info","request":{"proto":"HTTP/3.0"}}
{"level":"info","request":{"proto":"HTTP/2.0"}}
not json
{"level":"info","msg":"no request"}
`
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if m, n := countProto(p, "HTTP/3.0"); m != 2 || n != 3 {
		t.Errorf("countProto = %d of %d, want 2 of 3", m, n)
	}
	if m, n := countProto(filepath.Join(t.TempDir(), "none"), "HTTP/3.0"); m != 0 || n != 0 {
		t.Error("missing file")
	}
}

func TestCaddyModuleVersion(t *testing.T) {
	out := "/root/go/bin/caddy: go1.26.8\n\tpath\tgithub.com/caddyserver/caddy/v2/cmd/caddy\n\tmod\tgithub.com/caddyserver/caddy/v2\tv2.11.9\th1:abc=\n\tdep\tcel.dev/expr\tv0.25.3\n"
	if v := CaddyModuleVersion(out); v != "v2.11.9" {
		t.Errorf("got %q", v)
	}
	if v := CaddyModuleVersion("garbage"); v != "unknown" {
		t.Errorf("got %q", v)
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"bin/quicmesh", "proxy", "--admin", "", "--x", "a b", "it's", "k=v,w:1"})
	want := `bin/quicmesh proxy --admin '' --x 'a b' 'it'\''s' k=v,w:1`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{"0.5% loss": "0p5pct-loss", "10 ms delay + 2% loss": "10-ms-delay-2pct-loss", "2% loss": "2pct-loss", " a  b ": "a-b"} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFreePortAndProc(t *testing.T) {
	p, err := freePort()
	if err != nil || p <= 0 {
		t.Fatalf("freePort: %d %v", p, err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	pr, err := startProc("sleeper", "", filepath.Join(t.TempDir(), "log"), nil, sleep, "30")
	if err != nil {
		t.Fatal(err)
	}
	if !pr.alive() || pr.PID() <= 0 {
		t.Fatal("not running")
	}
	start := time.Now()
	pr.stop(2 * time.Second)
	if pr.alive() || time.Since(start) > 2*time.Second {
		t.Errorf("stop took %s", time.Since(start))
	}
	pr.stop(time.Second) // idempotent
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := waitTCP(ctx, "127.0.0.1:1", pr, time.Second); err == nil {
		t.Error("waitTCP on a dead process and closed port succeeded")
	}
}

// TestQuickRun runs the runner's quick plan (direct and quicmesh, 1 s per
// load) against the built binaries. It needs them, so it runs only when
// QUICMESH_SCENARIO_BIN names quicmesh (quicmesh-dev is taken from the same
// directory):
//
//	make build && QUICMESH_SCENARIO_BIN=$PWD/bin/quicmesh go test -run QuickRun ./bench/scenario
func TestQuickRun(t *testing.T) {
	bin := os.Getenv("QUICMESH_SCENARIO_BIN")
	if bin == "" {
		t.Skip("set QUICMESH_SCENARIO_BIN to a quicmesh binary to run the runner's smoke test")
	}
	if testing.Short() {
		t.Skip("short")
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Execute(ctx, Options{Bin: bin, OutDir: out, Plan: QuickPlan(), Command: "test"})
	if err != nil {
		t.Fatal(err)
	}
	sums := Summarize(res.Runs)
	for _, l := range QuickPlan().Loads {
		for _, tg := range l.Targets {
			s, ok := Find(sums, l.ID, "", tg)
			if !ok || s.OK != 1 || s.Requests == 0 {
				t.Errorf("%s %s: %+v", l.ID, tg, s)
			}
			if tg == Quicmesh && (len(s.RSS) != 2 || math_isNaN(s.CPUPerReq)) {
				t.Errorf("%s: sidecars not sampled: %+v", l.ID, s)
			}
		}
	}
	if _, err := RenderHTML(res); err != nil {
		t.Fatal(err)
	}
}

func math_isNaN(x float64) bool { return x != x }
