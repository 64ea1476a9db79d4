package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// moduleGoroutines returns the stacks of this module's goroutines other
// than the caller's, by goroutine header ("goroutine 7 [select]:" without
// the state, so a goroutine changing state keeps its key).
func moduleGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[running]") || !strings.Contains(g, "github.com/quicmesh/quicmesh/") {
			continue
		}
		id, _, _ := strings.Cut(header, " [")
		out[id] = g
	}
	return out
}

// checkNoNewGoroutines fails t if goroutines of this module that were not
// running before (see moduleGoroutines) are still there once they had
// every chance to end, and prints them.
func checkNoNewGoroutines(t *testing.T, before map[string]string) {
	t.Helper()
	// Close returns once each poller has signalled its end; the goroutine
	// itself still has to return, which takes a scheduling round, more
	// on a loaded machine. The bound only limits how long a leak takes
	// to report.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var leaked []string
		for id, stack := range moduleGoroutines() {
			if _, ok := before[id]; !ok {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(leaked)
			t.Fatalf("%d goroutines left behind:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A sidecar that fails to start closes everything it opened before the
// failure: the identity files' poller, the discovery file's poller, the
// admin server, listeners. Each case fails at a different stage.
func TestFailedStartLeavesNothingRunning(t *testing.T) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	disco := filepath.Join(dir, "services.json")
	if err := os.WriteFile(disco, []byte(`{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "spiffe://test.local/echo"}]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	inUse, udpInUse := takenAddrs(t)

	proxy := func(extra ...string) []string {
		return append([]string{"proxy", "--cert", cert, "--key", key, "--bundle", bundle, "--discovery-file", disco,
			"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0"}, extra...)
	}
	tests := []struct {
		name string
		args []string
		want string // in the error line
	}{
		{"bad bind option (before anything is opened)", proxy("--bind", "127.0.0.1:0=echo,fast"), `unknown option "fast"`},
		{"bad certificate (while opening identity)", proxy("--cert", bundle), "--cert, --key, --bundle: "},
		{"unknown bind service (identity and discovery open)", proxy("--bind", "127.0.0.1:0=nosuch"), `service "nosuch" is not in the discovery file`},
		{"admin port taken", proxy("--admin", inUse), "--admin " + inUse + ": bind: address already in use"},
		{"inbound port taken", proxy("--inbound", udpInUse), "--inbound " + udpInUse + ": bind: address already in use"},
		{"bind port taken (admin server up)", proxy("--bind", inUse+"=echo"), "--bind " + inUse + "=echo: bind: address already in use"},
		{"HTTP proxy port taken (admin server up)", proxy("--http-proxy", inUse), "--http-proxy " + inUse + ": bind: address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := moduleGoroutines()
			code, stdout, stderr := runCmd(tt.args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and an error line containing %q", code, stdout, stderr, tt.want)
			}
			checkNoNewGoroutines(t, before)
		})
	}
}

// The check above can see a leak: a file poller that is never closed.
func TestCheckNoNewGoroutinesSeesAPoller(t *testing.T) {
	before := moduleGoroutines()
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	c, f := newProxyCommand(nopWriter{}, nopWriter{})
	if _, ok := c.Parse([]string{"--cert", cert, "--key", key, "--bundle", bundle}); !ok {
		t.Fatal("flags do not parse")
	}
	opts, err := mergeProxyOptions(&fileConfig{}, f, setFlags(c.Flags))
	if err != nil {
		t.Fatal(err)
	}
	_, closeAll, err := openProxy(opts, nopWriter{})
	if err != nil {
		t.Fatal(err)
	}
	after := moduleGoroutines()
	var started []string
	for id, stack := range after {
		if _, ok := before[id]; !ok {
			started = append(started, stack)
		}
	}
	closeAll()
	if !strings.Contains(strings.Join(started, "\n"), "filewatch") {
		t.Fatalf("an open identity provider shows no filewatch goroutine among the new ones:\n%s", fmt.Sprint(started))
	}
	checkNoNewGoroutines(t, before)
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
