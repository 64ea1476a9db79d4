package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestChooseCores(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      coresInput
		want    coresChoice
		wantErr string
	}{
		{name: "sidecar on a 64-CPU node without a CPU limit: capped",
			in:   coresInput{goDefault: 64, numCPU: 64, limit: sidecarCores},
			want: coresChoice{procs: sidecarCores, source: coresFromSidecar, set: true, goDefault: 64}},
		{name: "sidecar on 2 CPUs: nothing to change",
			in:   coresInput{goDefault: 2, numCPU: 2, limit: 2},
			want: coresChoice{procs: 2, source: coresFromGo, goDefault: 2}},
		{name: "sidecar on 1 CPU: below the cap",
			in:   coresInput{goDefault: 1, numCPU: 1, limit: 2},
			want: coresChoice{procs: 1, source: coresFromGo, goDefault: 1}},
		{name: "sidecar under a CPU limit of 500m (Go's floor 2)",
			in:   coresInput{goDefault: 2, numCPU: 64, limit: 2},
			want: coresChoice{procs: 2, source: coresFromCPULimit, goDefault: 2}},
		{name: "sidecar under a CPU limit of 4 on 64 CPUs: the limit, above the cap",
			in:   coresInput{goDefault: 4, numCPU: 64, limit: 2},
			want: coresChoice{procs: 4, source: coresFromCPULimit, goDefault: 4}},
		{name: "sidecar under a CPU limit at or above its CPUs: no limit in effect, capped",
			in:   coresInput{goDefault: 8, numCPU: 8, limit: 2},
			want: coresChoice{procs: 2, source: coresFromSidecar, set: true, goDefault: 8}},
		{name: "gateway: no cap",
			in:   coresInput{goDefault: 64, numCPU: 64},
			want: coresChoice{procs: 64, source: coresFromGo, goDefault: 64}},
		{name: "gateway under a CPU limit",
			in:   coresInput{goDefault: 6, numCPU: 64},
			want: coresChoice{procs: 6, source: coresFromCPULimit, goDefault: 6}},
		{name: "--cores 0: Go's default, uncapped",
			in:   coresInput{flagSet: true, goDefault: 64, numCPU: 64, limit: 2},
			want: coresChoice{procs: 64, source: coresFromGo, goDefault: 64}},
		{name: "--cores 1",
			in:   coresInput{flag: 1, flagSet: true, goDefault: 64, numCPU: 64, limit: 2},
			want: coresChoice{procs: 1, source: coresFromFlag, set: true, goDefault: 64}},
		{name: "--cores 1 under a CPU limit of 4",
			in:   coresInput{flag: 1, flagSet: true, goDefault: 4, numCPU: 64, limit: 2},
			want: coresChoice{procs: 1, source: coresFromFlag, set: true, goDefault: 4}},
		{name: "--cores above the CPUs: taken as given",
			in:   coresInput{flag: 8, flagSet: true, goDefault: 2, numCPU: 2, limit: 2},
			want: coresChoice{procs: 8, source: coresFromFlag, set: true, goDefault: 2}},
		{name: "--cores on a gateway",
			in:   coresInput{flag: 4, flagSet: true, goDefault: 64, numCPU: 64},
			want: coresChoice{procs: 4, source: coresFromFlag, set: true, goDefault: 64}},
		{name: "$GOMAXPROCS wins over the cap",
			in:   coresInput{env: "16", goDefault: 16, numCPU: 64, limit: 2},
			want: coresChoice{procs: 16, source: coresFromEnv, goDefault: 16}},
		{name: "$GOMAXPROCS wins over --cores",
			in:   coresInput{env: "3", flag: 1, flagSet: true, goDefault: 3, numCPU: 64, limit: 2},
			want: coresChoice{procs: 3, source: coresFromEnv, flagIgnored: true, goDefault: 3}},
		{name: "$GOMAXPROCS the runtime ignored (not a positive number) is ignored here too",
			in:   coresInput{env: "all", goDefault: 64, numCPU: 64, limit: 2},
			want: coresChoice{procs: 2, source: coresFromSidecar, set: true, goDefault: 64}},
		{name: "$GOMAXPROCS=0 is ignored by the runtime",
			in:   coresInput{env: "0", flag: 1, flagSet: true, goDefault: 64, numCPU: 64, limit: 2},
			want: coresChoice{procs: 1, source: coresFromFlag, set: true, goDefault: 64}},
		{name: "negative --cores",
			in:      coresInput{flag: -1, flagSet: true, goDefault: 2, numCPU: 2, limit: 2},
			wantErr: "--cores -1: must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chooseCores(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("chooseCores(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

// A negative --cores is a configuration error naming the flag, on both
// commands; nothing is started.
func TestCoresFlagNegative(t *testing.T) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	for _, args := range [][]string{
		{"proxy", "--cert", cert, "--key", key, "--bundle", bundle, "--cores", "-2"},
		{"gateway", "--discovery-file", filepath.Join(dir, "none.json"), "--export", "web", "--cores", "-2"},
	} {
		code, _, stderr := runCmd(args...)
		if code != 1 || !strings.Contains(stderr, "--cores -2: must not be negative") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q; want 1 and one line naming --cores", args[0], code, stderr)
		}
	}
}

// The sidecar and the gateway apply their choice: a `quicmesh proxy` or
// `quicmesh gateway` process (the test binary re-executed) reports it in
// its start-up log and runs with it,
// as the Prometheus Go collector's go_sched_gomaxprocs_threads on
// /metrics shows.
func TestCoresApplied(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	discoveryFile := filepath.Join(dir, "discovery.json")
	if err := os.WriteFile(discoveryFile, []byte(`{"services": {"web": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "spiffe://test.local/web"}]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string // $GOMAXPROCS, "" unset
		args []string
		// want is the GOMAXPROCS expected from Go's default and the
		// CPUs, as the sidecar's log reports them (they are the
		// machine's and its container's).
		want    func(goDefault, cpus int) int
		source  string
		gateway bool // quicmesh gateway instead of quicmesh proxy
	}{
		{name: "default", want: func(d, cpus int) int {
			c, _ := chooseCores(coresInput{goDefault: d, numCPU: cpus, limit: sidecarCores})
			return c.procs
		}},
		{name: "cores 1", args: []string{"--cores", "1"}, want: func(int, int) int { return 1 }, source: coresFromFlag},
		{name: "cores 3", args: []string{"--cores", "3"}, want: func(int, int) int { return 3 }, source: coresFromFlag},
		{name: "cores 0", args: []string{"--cores", "0"}, want: func(d, _ int) int { return d }},
		{name: "GOMAXPROCS wins", env: "3", args: []string{"--cores", "1"}, want: func(int, int) int { return 3 }, source: coresFromEnv},
		{name: "gateway default", gateway: true, want: func(d, _ int) int { return d }},
		{name: "gateway cores 1", gateway: true, args: []string{"--cores", "1"}, want: func(int, int) int { return 1 }, source: coresFromFlag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := []string{reexecEnv + "=1"}
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "GOMAXPROCS=") && !strings.HasPrefix(kv, reexecEnv+"=") {
					env = append(env, kv)
				}
			}
			if tc.env != "" {
				env = append(env, "GOMAXPROCS="+tc.env)
			}
			args, readyMsg := []string{"proxy", "--cert", cert, "--key", key, "--bundle", bundle,
				"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "",
				"--log-format", "json", "--grace", "1s"}, "ready"
			if tc.gateway {
				args, readyMsg = []string{"gateway", "--discovery-file", discoveryFile, "--export", "web",
					"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json"}, "gateway ready"
			}
			args = append(args, tc.args...)
			var logs testkit.LogBuffer
			cmd := exec.Command(self, args...)
			cmd.Env, cmd.Stderr = env, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(time.Until(testkit.HangGuard(t))):
					cmd.Process.Kill()
					<-exited
				}
			})
			type record struct {
				Msg, Admin, Source string
				GOMAXPROCS         int `json:"gomaxprocs"`
				GoDefault          int `json:"go_default"`
				CPUs               int
			}
			var ready, cores record
			testkit.Eventually(t, "the ready log line", func() bool {
				select {
				case err := <-exited:
					t.Fatalf("exited (%v) before it was ready:\n%s", err, logs.String())
				default:
				}
				for line := range strings.SplitSeq(logs.String(), "\n") {
					var r record
					if json.Unmarshal([]byte(line), &r) != nil {
						continue
					}
					switch r.Msg {
					case readyMsg:
						ready = r
					case "cores", "cores: the GOMAXPROCS environment variable overrides --cores":
						cores = r
					}
				}
				return ready.Admin != ""
			})
			want := tc.want(cores.GoDefault, cores.CPUs)
			if cores.GoDefault < 1 || cores.CPUs < 1 || cores.GOMAXPROCS != want {
				t.Fatalf("start-up log says gomaxprocs %d (Go's default %d), want %d:\n%s", cores.GOMAXPROCS, cores.GoDefault, want, logs.String())
			}
			if tc.source != "" && cores.Source != tc.source {
				t.Errorf("source %q, want %q", cores.Source, tc.source)
			}
			if got := scrapeMetric(t, ready.Admin, "go_sched_gomaxprocs_threads"); got != want {
				t.Errorf("go_sched_gomaxprocs_threads = %d, want %d", got, want)
			}
		})
	}
}

// scrapeMetric reads one unlabelled integer sample from /metrics.
func scrapeMetric(t *testing.T, admin, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s %q: %v", name, v, err)
			}
			return n
		}
	}
	t.Fatalf("/metrics has no %s (%v)", name, sc.Err())
	return 0
}
