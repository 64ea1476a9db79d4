package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func runMain(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Main("quicmesh-dev bench", args, &o, &e)
	return code, o.String(), e.String()
}

func TestMainBadFlags(t *testing.T) {
	const usage, config = 2, 1
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--target", "127.0.0.1:1"}, config, "--proto is required"},
		{[]string{"--proto", "http1"}, config, "--target is required"},
		{[]string{"--proto", "quic", "--target", "x:1"}, config, `--proto: unknown protocol "quic"`},
		{[]string{"--proto", "tcp", "--target", "x:1", "--rate", "-5"}, config, "--rate -5: out of range"},
		{[]string{"--proto", "tcp", "--target", "x:1", "--rate", "abc"}, config, `--rate: invalid value "abc": want a number`},
		{[]string{"--proto", "tcp", "--target", "x:1", "--duration", "0s"}, config, "--duration must be positive"},
		{[]string{"--proto", "tcp", "--target", "x:1", "--duration", "ten"}, config, `--duration: invalid value "ten": want a duration`},
		{[]string{"--proto", "tcp", "--target", "x:1", "--concurrency", "0"}, config, "--concurrency must be positive"},
		{[]string{"--proto", "tcp", "--target", "x:1", "--payload", "-1"}, config, "--payload -1: out of range"},
		{[]string{"--proto", "tcp-bulk", "--target", "x:1", "--rate", "10"}, config, "--rate: tcp-bulk measures maximum throughput"},
		{[]string{"--proto", "tcp", "--target", "x:1", "--pid", "nonsense"}, config, `--pid: invalid value "nonsense"`},
		{[]string{"--proto", "tcp", "--target", "x:1", "--pid", "gone=999999999"}, config, "cannot read process"},
		{[]string{"--proto", "grpc", "--target", "http://x:1/"}, config, `--target "http://x:1/": want host:port`},
		{[]string{"--proto", "tcp", "--target", "nohost"}, config, `--target "nohost": want host:port`},
		{[]string{"--proto", "h2c", "--target", "https://x:1/"}, config, "--target \"https://x:1/\": scheme must be http"},
		{[]string{"--proto", "tcp", "--target", "x:1", "--bogus"}, usage, "unknown flag --bogus"},
		{[]string{"--proto", "tcp", "--target"}, usage, "flag needs a value: --target"},
		{[]string{"--proto", "tcp", "--target", "x:1", "extra"}, usage, `unexpected argument "extra"`},
	} {
		code, out, errOut := runMain(tc.args...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d", tc.args, code, tc.code)
		}
		if out != "" {
			t.Errorf("%v: stdout %q", tc.args, out)
		}
		if !strings.HasPrefix(errOut, "quicmesh-dev bench: ") || strings.Count(errOut, "\n") != 1 ||
			!strings.Contains(errOut, tc.want) {
			t.Errorf("%v: stderr %q, want one line containing %q", tc.args, errOut, tc.want)
		}
	}
	for _, help := range []string{"-h", "--help", "-help"} {
		code, out, errOut := runMain(help)
		if code != 0 || errOut != "" || !strings.Contains(out, "usage: quicmesh-dev bench") || !strings.Contains(out, "-connections") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", help, code, out, errOut)
		}
	}
}

func TestMainRun(t *testing.T) {
	srv := startEcho(t, "http1")
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "out.json")
	code, out, errOut := runMain("--proto", "http1", "--target", srv.URL(), "--rate", "200",
		"--duration", "300ms", "--warmup", "100ms", "--concurrency", "4", "--connections", "2",
		"--json", path, "--pid", "self="+strconv.Itoa(os.Getpid()))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if errOut != "" {
		t.Errorf("stderr (not a terminal) = %q", errOut)
	}
	if !strings.Contains(out, "open loop, uniform pacing at 200 req/s") || !strings.Contains(out, "p99.9") {
		t.Errorf("table:\n%s", out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Schema != SchemaVersion || r.Proto != "http1" || r.Model != "open" || r.Rate != 200 ||
		r.Concurrency != 4 || r.Connections != 2 || r.Requests+r.Unsent != 60 || r.ErrorTotal != 0 {
		t.Errorf("result %+v", r)
	}
	if len(r.Processes) != 1 || r.Processes[0].Name != "self" || r.Processes[0].PID != os.Getpid() ||
		r.Processes[0].Samples < 2 || r.Processes[0].PeakRSSMiB <= 0 {
		t.Errorf("processes %+v", r.Processes)
	}

	// --json - puts the JSON alone on stdout and the table on stderr.
	code, out, errOut = runMain("--proto", "tcp", "--target", strings.TrimPrefix(strings.TrimSuffix(srv.URL(), "/"), "http://"),
		"--duration", "1s", "--concurrency", "1", "--timeout", "20ms", "--json", "-")
	// The target speaks HTTP and never answers 64 bytes without a newline,
	// so every round trip times out: still exit 0, errors counted.
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	if m["error_total"].(float64) == 0 || m["errors"].(map[string]any)["timeout"] != m["error_total"] ||
		!strings.Contains(errOut, "quicmesh bench: tcp") {
		t.Errorf("json %v\nstderr %s", m, errOut)
	}
}
