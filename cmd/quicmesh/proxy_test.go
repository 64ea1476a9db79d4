package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

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
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A control plane's provider and connections are open when the admin
	// port turns out to be taken.
	ctl := []string{"proxy", "--control", "127.0.0.1:1", "--control-ca", filepath.Join(dir, "ca", "ca.crt"), "--control-token", token,
		"--inbound", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0", "--admin", inUse}
	tests := []struct {
		name string
		args []string
		want string // in the error line
	}{
		{"admin port taken (control plane connected)", ctl, "--admin " + inUse + ": bind: address already in use"},
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
			before := testkit.TakeBaseline()
			code, stdout, stderr := runCmd(tt.args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and an error line containing %q", code, stdout, stderr, tt.want)
			}
			before.Check(t)
		})
	}
}

// The check above can see a leak: a file poller that is never closed.
func TestLeakCheckSeesAPoller(t *testing.T) {
	before := testkit.TakeBaseline()
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
	started := before.Started()
	closeAll()
	if !strings.Contains(started, "filewatch") {
		t.Fatalf("an open identity provider shows no filewatch goroutine among the new ones:\n%s", started)
	}
	before.Check(t)
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
