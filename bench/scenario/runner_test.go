package scenario

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
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

func TestRunNameAndNS(t *testing.T) {
	l := Load{ID: "lossy-tcp"}
	for _, tc := range []struct{ cond, target, want string }{
		{"", Quicmesh, "lossy-tcp-quicmesh-r2"},
		{"10 ms delay + 2% loss", Stunnel, "lossy-tcp-10-ms-delay-2pct-loss-stunnel-r2"},
	} {
		if got := runName(l, tc.cond, tc.target, 2); got != tc.want {
			t.Errorf("runName(%q, %s) = %s, want %s", tc.cond, tc.target, got, tc.want)
		}
	}
	if got := inNS("", []string{"a", "b"}); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("host namespace: %q", got)
	}
	if got := inNS("qmb.client", []string{"a"}); !reflect.DeepEqual(got, []string{"ip", "netns", "exec", "qmb.client", "a"}) {
		t.Errorf("namespace: %q", got)
	}
}

func TestPortAlloc(t *testing.T) {
	a := newPortAlloc()
	for _, tc := range []struct{ ns, host, want string }{
		{"lab.client", "10.77.90.1", "10.77.90.1:20001"},
		{"lab.server", "127.0.0.1", "127.0.0.1:20002"},
		{"lab.client", "127.0.0.1", "127.0.0.1:20003"},
	} {
		if got, err := a.addr(tc.ns, tc.host); err != nil || got != tc.want {
			t.Errorf("addr(%s, %s) = %s, %v; want %s", tc.ns, tc.host, got, err, tc.want)
		}
	}
	host, err := a.addr("", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", host) // free on the host: it can be bound
	if err != nil {
		t.Fatalf("%s: %v", host, err)
	}
	ln.Close()
}

func TestRecorder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plan  Plan
		quick bool
	}{
		{"quick", QuickPlan(), true},
		{"default", DefaultPlan(), false},
		{"empty", Plan{Rounds: 1}, false},
	} {
		var log strings.Builder
		rec := newRecorder(Options{Plan: tc.plan, Command: "c", Notes: []string{"given"}, Log: &log}, time.Now())
		if rec.res.Quick != tc.quick || rec.res.Schema != ResultsSchema || rec.res.Command != "c" || len(rec.res.Loads) != len(tc.plan.Loads) {
			t.Errorf("%s: %+v", tc.name, rec.res)
		}
		rec.note("a  note\n  on two lines: %d", 7)
		if !reflect.DeepEqual(rec.res.Notes, []string{"given", "a note on two lines: 7"}) || !strings.Contains(log.String(), "note: a note on two lines: 7\n") {
			t.Errorf("%s: notes %q, log %q", tc.name, rec.res.Notes, log.String())
		}
	}
	// Without a log, nothing is written anywhere.
	newRecorder(Options{}, time.Now()).logf("dropped")
}

func TestSupervisor(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	sup := &supervisor{logDir: t.TempDir()}
	defer sup.stopAll()
	var ps []*proc
	for _, name := range []string{"one", "two", "three"} {
		p, err := sup.start(name, "", nil, sleep, "30")
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if _, err := sup.start("missing", "", nil, filepath.Join(sup.logDir, "no-such-binary")); err == nil {
		t.Error("started a missing binary")
	}
	sup.stop(ps[1:2])
	if len(sup.live) != 2 || sup.live[0] != ps[0] || sup.live[1] != ps[2] || ps[1].alive() {
		t.Fatalf("after stopping two: live %+v", sup.live)
	}
	sup.stopAll()
	if len(sup.live) != 0 || ps[0].alive() || ps[2].alive() {
		t.Fatalf("after stopAll: live %+v", sup.live)
	}
	for _, name := range []string{"one", "two", "three"} {
		if _, err := os.Stat(filepath.Join(sup.logDir, name+".log")); err != nil {
			t.Error(err)
		}
	}
}
