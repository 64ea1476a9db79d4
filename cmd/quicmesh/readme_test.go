package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeBlock returns the first ```sh block after heading in README.md.
func readmeBlock(t *testing.T, readme, heading string) string {
	t.Helper()
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no %q section", heading)
	}
	m := regexp.MustCompile("(?s)\n```sh\n(.*?)\n```\n").FindStringSubmatch(section)
	if m == nil {
		t.Fatalf("README section %q has no ```sh block", heading)
	}
	return m[1]
}

// The README's hand-run example works when run as written, from the root
// of the clone, in a fresh shell: it builds quicmesh, starts an echo app
// and two sidecars on the ports it names, and its final requests cross the
// mesh. The block comes from README.md itself, so the two cannot drift.
//
// The shell runs in a network namespace of its own when one can be made,
// so the README's fixed loopback ports cannot collide with anything else
// running on the machine; otherwise on the host's loopback.
func TestReadmeRunningSidecarsByHand(t *testing.T) {
	for _, tool := range []string{"bash", "make", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README example needs %s (.ci/run installs it): %v", tool, err)
		}
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "readme.sh")
	if err := os.WriteFile(script, []byte(readmeBlock(t, filepath.Join(root, "README.md"), "## Running sidecars by hand")), 0o644); err != nil {
		t.Fatal(err)
	}
	// -e: a failing line fails the test; the lines run in order as typed.
	shell := []string{"bash", "-euo", "pipefail", script}
	if netns := ownNetworkNamespace(t); netns != nil {
		shell = append(netns, "bash", "-c", `ip link set dev lo up && exec "$@"`, "readme")
		shell = append(shell, "bash", "-euo", "pipefail", script)
	}

	timeout := 10 * time.Minute // a cold `make build` under load takes minutes
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - 10*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, shell[0], shell[1:]...)
	cmd.Dir = root
	cmd.Env = freshShellEnv(t.TempDir())
	// A file, not a pipe: the background jobs keep their copy of stdout,
	// and Wait must return when the shell ends, not when they do.
	cmd.Stdout, cmd.Stderr = out, out
	// The shell and its background jobs share a process group, which is
	// killed whatever happens, so no sidecar outlives the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	runErr := cmd.Wait()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	output, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	if runErr != nil {
		t.Fatalf("README block failed: %v\n%s", runErr, output)
	}
	for _, want := range []string{
		"HTTP/1.1 200 OK",
		"Echo-Peer-Identity: spiffe://cluster.local/ns/default/sa/web",
		"\nok\n", // through the HTTP proxy listener
	} {
		if !strings.Contains(strings.ReplaceAll(string(output), "\r\n", "\n"), want) {
			t.Errorf("README block output lacks %q:\n%s", want, output)
		}
	}
}

// ownNetworkNamespace returns the command prefix that runs a command in a
// new network namespace, or nil if this machine does not allow one.
func ownNetworkNamespace(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Logf("no ip(8): running on the host's loopback")
		return nil
	}
	prefix := []string{"unshare", "--net"}
	if os.Geteuid() != 0 {
		prefix = append(prefix, "--map-root-user")
	}
	probe := append(append([]string(nil), prefix...), "ip", "link", "set", "dev", "lo", "up")
	if out, err := exec.Command(probe[0], probe[1:]...).CombinedOutput(); err != nil {
		t.Logf("no network namespace (%v: %s): running on the host's loopback", err, out)
		return nil
	}
	return prefix
}

// freshShellEnv is the test's environment minus what a fresh shell would
// not have inherited from a test run: proxy settings that would send the
// README's curl elsewhere. TMPDIR points into the test's own directory.
func freshShellEnv(tmp string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(name) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy", "tmpdir", "curl_home":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "TMPDIR="+tmp)
}
