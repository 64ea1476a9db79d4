package scenario

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake proxy for the launcher's tests: with
// fakeProxyEnv set it runs fakeProxy instead of the tests.
const fakeProxyEnv = "QUICMESH_SCENARIO_FAKE_PROXY"

func TestMain(m *testing.M) {
	if os.Getenv(fakeProxyEnv) != "" {
		os.Exit(fakeProxy(os.Args[1:]))
	}
	code := m.Run()
	removeBuiltBinaries()
	os.Exit(code)
}

// fakeProxy: "listen ADDR" listens on TCP address ADDR until SIGTERM;
// anything else fails at once.
func fakeProxy(args []string) int {
	if len(args) != 2 || args[0] != "listen" {
		fmt.Fprintln(os.Stderr, "fake proxy: told to fail:", args)
		return 3
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Unaccepted connections complete in the backlog: enough for waitTCP.
	<-ctx.Done()
	ln.Close()
	return 0
}

// fakeKind runs the test binary as both sides: B listens on the peer
// address, A on the front (or exits at once if failA).
func fakeKind(failA bool, sidesErr error) pairKind {
	bin, _ := os.Executable()
	return pairKind{
		Proc: "fake",
		Bin:  func(*Options) string { return bin },
		Env:  func(workDir) []string { return []string{fakeProxyEnv + "=1"} },
		Sides: func(s pairSetup) ([]string, []string, error) {
			if sidesErr != nil {
				return nil, nil, sidesErr
			}
			a := []string{s.Bin, "listen", s.Front}
			if failA {
				a = []string{s.Bin, "exit", "now"}
			}
			return []string{s.Bin, "listen", s.Peer}, a, nil
		},
	}
}

func newTestLauncher(t *testing.T, opt *Options) *launcher {
	t.Helper()
	work := workDir(t.TempDir())
	for _, d := range []string{"logs", "conf", "caddy-home"} {
		if err := os.MkdirAll(work.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sup := &supervisor{logDir: work.path("logs")}
	t.Cleanup(sup.stopAll)
	return &launcher{opt: opt, sup: sup, ports: newPortAlloc(), work: work, certs: testCerts,
		mesh: quicmeshCerts{A: "/q/a/client", B: "/q/b/echo", IDB: "spiffe://bench.local/ns/bench/sa/echo"}}
}

func TestLauncherAvailable(t *testing.T) {
	all := Options{Bin: "/b/quicmesh", Caddy: "/b/caddy", HAProxy: "/b/haproxy", Stunnel: "/b/stunnel"}
	none := Options{Bin: "/b/quicmesh"}
	for _, tc := range []struct {
		opt         Options
		target, app string
		ok          bool
		why         string
	}{
		{none, Direct, "tcp", true, ""},
		{none, Quicmesh, "tcp", true, ""},
		{none, QuicmeshTCP, "tcp", true, ""},
		{none, QuicmeshTCP, "grpc", true, ""},
		{all, CaddyH3, "http1", true, ""},
		{all, CaddyH3, "grpc", true, ""},
		{all, CaddyH3, "tcp", false, "Caddy's reverse proxy carries HTTP only"},
		{none, CaddyH3, "http1", false, "Caddy 2.11 is not installed"},
		{all, HAProxyH2, "tcp", true, ""},
		{none, HAProxyH2, "grpc", false, "haproxy is not installed"},
		{all, Stunnel, "tcp", true, ""},
		{none, Stunnel, "http1", false, "stunnel is not installed"},
	} {
		ln := &launcher{opt: &tc.opt}
		if ok, why := ln.available(tc.target, tc.app); ok != tc.ok || why != tc.why {
			t.Errorf("%s carrying %s (peers %v): %v %q, want %v %q", tc.target, tc.app, tc.opt.Caddy != "", ok, why, tc.ok, tc.why)
		}
	}
	// Every target but Direct is a pair kind, and every pair kind a target.
	for _, tg := range Targets {
		if _, ok := pairKinds[tg]; ok == (tg == Direct) {
			t.Errorf("target %s: pair kind defined = %v", tg, ok)
		}
	}
	// Each quicmesh pair's processes are named after its target, so the
	// two transports' CPU and RSS columns cannot be mixed up.
	for _, tg := range []string{Quicmesh, QuicmeshTCP} {
		if k := pairKinds[tg]; k.Proc != tg {
			t.Errorf("target %s runs processes %s-a/-b", tg, k.Proc)
		}
	}
	if len(pairKinds) != len(Targets)-1 {
		t.Errorf("%d pair kinds for %d targets", len(pairKinds), len(Targets))
	}
}

// TestPairKindSides checks each kind's command lines and that they name
// configuration files it wrote with the configs.go text.
func TestPairKindSides(t *testing.T) {
	opt := Options{Bin: "/b/quicmesh", Caddy: "/b/caddy", HAProxy: "/b/haproxy", Stunnel: "/b/stunnel"}
	ln := newTestLauncher(t, &opt)
	conf := func(name string) string { return ln.work.path("conf", name) }
	p := Pair{Front: "127.0.0.1:7000", Peer: "10.77.90.2:7100", AppAddr: "127.0.0.1:8000", App: "grpc"}
	for _, tc := range []struct {
		target       string
		wantB, wantA []string
		files        map[string]string // file -> expected content
	}{
		{Quicmesh,
			append([]string{"/b/quicmesh"}, QuicmeshInboundArgs("/q/b/echo", p.Peer, "", map[string]string{"grpc": p.AppAddr})...),
			append([]string{"/b/quicmesh"}, QuicmeshOutboundArgs("/q/a/client", "10.77.90.1:9000", "", conf("services-T.json"), map[string]string{"grpc": p.Front})...),
			map[string]string{"services-T.json": `"addr": "10.77.90.2:7100"`}},
		{QuicmeshTCP,
			append([]string{"/b/quicmesh"}, QuicmeshInboundArgs("/q/b/echo", p.Peer, "tcp", map[string]string{"grpc": p.AppAddr})...),
			append([]string{"/b/quicmesh"}, QuicmeshOutboundArgs("/q/a/client", "10.77.90.1:9000", "tcp", conf("services-T.json"), map[string]string{"grpc": p.Front})...),
			map[string]string{"services-T.json": `"identity": "spiffe://bench.local/ns/bench/sa/echo"`}},
		{CaddyH3,
			[]string{"/b/caddy", "run", "--config", conf("Caddyfile-b-T"), "--adapter", "caddyfile"},
			[]string{"/b/caddy", "run", "--config", conf("Caddyfile-a-T"), "--adapter", "caddyfile"},
			map[string]string{"Caddyfile-b-T": CaddyInbound(p, testCerts, ""), "Caddyfile-a-T": CaddyOutbound(p, testCerts)}},
		{HAProxyH2,
			[]string{"/b/haproxy", "-db", "-f", conf("haproxy-b-T.cfg")},
			[]string{"/b/haproxy", "-db", "-f", conf("haproxy-a-T.cfg")},
			map[string]string{"haproxy-b-T.cfg": HAProxyInbound(p, testCerts), "haproxy-a-T.cfg": HAProxyOutbound(p, testCerts)}},
		{Stunnel,
			[]string{"/b/stunnel", conf("stunnel-b-T.conf")},
			[]string{"/b/stunnel", conf("stunnel-a-T.conf")},
			map[string]string{"stunnel-b-T.conf": StunnelInbound(p, testCerts), "stunnel-a-T.conf": StunnelOutbound(p, testCerts)}},
	} {
		t.Run(tc.target, func(t *testing.T) {
			k := pairKinds[tc.target]
			s := pairSetup{Pair: p, Tag: "T", Bin: k.Bin(&opt), Certs: ln.certs, Mesh: ln.mesh, Work: ln.work,
				ClientAddr: func() (string, error) { return "10.77.90.1:9000", nil }}
			b, a, err := k.Sides(s)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(b, tc.wantB) || !reflect.DeepEqual(a, tc.wantA) {
				t.Errorf("sides:\nB %q\nwant %q\nA %q\nwant %q", b, tc.wantB, a, tc.wantA)
			}
			for name, want := range tc.files {
				got, err := os.ReadFile(conf(name))
				if err != nil || !strings.Contains(string(got), want) {
					t.Errorf("%s = %q, %v; want it to hold %q", name, got, err, want)
				}
			}
		})
	}
	// Caddy's home is the work directory's, never the user's.
	env := pairKinds[CaddyH3].Env(ln.work)
	for _, e := range env {
		if _, v, _ := strings.Cut(e, "="); v != ln.work.path("caddy-home") {
			t.Errorf("Caddy env %q", e)
		}
	}
	if len(env) != 3 {
		t.Errorf("Caddy env %q", env)
	}
}

func TestLauncherStartPair(t *testing.T) {
	opt := Options{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	apps := map[string]string{"tcp": "127.0.0.1:1"}

	t.Run("started", func(t *testing.T) {
		ln := newTestLauncher(t, &opt)
		lt, err := ln.startPair(ctx, "fake", fakeKind(false, nil), "tcp", loopback(apps), "T")
		if err != nil {
			t.Fatal(err)
		}
		if len(lt.procs) != 2 || lt.procs[0].name != "fake-b-T" || lt.procs[1].name != "fake-a-T" {
			t.Fatalf("procs %+v", lt.procs)
		}
		if lt.name != "fake" || lt.ns != "" || len(lt.sample) != 2 ||
			lt.sample[0].Name != "fake-a" || lt.sample[0].PID != lt.procs[1].PID() ||
			lt.sample[1].Name != "fake-b" || lt.sample[1].PID != lt.procs[0].PID() {
			t.Errorf("live target %+v", lt)
		}
		// The front accepts connections when start returns.
		c, err := net.DialTimeout("tcp", lt.front, 5*time.Second)
		if err != nil {
			t.Fatalf("front %s: %v", lt.front, err)
		}
		c.Close()
		ln.sup.stop(lt.procs)
		if len(ln.sup.live) != 0 || lt.procs[0].alive() || lt.procs[1].alive() {
			t.Error("processes survive stop")
		}
		if _, err := os.Stat(filepath.Join(ln.sup.logDir, "fake-a-T.log")); err != nil {
			t.Error(err)
		}
	})
	t.Run("outbound side exits", func(t *testing.T) {
		ln := newTestLauncher(t, &opt)
		_, err := ln.startPair(ctx, "fake", fakeKind(true, nil), "tcp", loopback(apps), "T")
		if err == nil || !strings.Contains(err.Error(), "fake-a-T exited") || !strings.Contains(err.Error(), "told to fail") {
			t.Fatalf("err = %v", err)
		}
		if len(ln.sup.live) != 0 {
			t.Errorf("inbound side left running: %+v", ln.sup.live)
		}
	})
	t.Run("configuration fails", func(t *testing.T) {
		ln := newTestLauncher(t, &opt)
		_, err := ln.startPair(ctx, "fake", fakeKind(false, fmt.Errorf("no space")), "tcp", loopback(apps), "T")
		if err == nil || err.Error() != "no space" || len(ln.sup.live) != 0 {
			t.Fatalf("err = %v, live %+v", err, ln.sup.live)
		}
	})
	t.Run("direct and unknown", func(t *testing.T) {
		ln := newTestLauncher(t, &opt)
		lt, err := ln.start(ctx, Direct, "tcp", loopback(apps), "T")
		if err != nil || lt.front != "127.0.0.1:1" || len(lt.procs) != 0 || len(lt.sample) != 0 {
			t.Errorf("direct = %+v, %v", lt, err)
		}
		if _, err := ln.start(ctx, "nginx", "tcp", loopback(apps), "T"); err == nil {
			t.Error("unknown target started")
		}
	})
}
