//go:build linux

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// quicmesh init fails in one line, before touching anything, without the
// privilege to change iptables or without the iptables binaries.
func TestInitPrerequisites(t *testing.T) {
	if os.Geteuid() != 0 {
		var out, errb bytes.Buffer
		if code := run([]string{"init", "--proxy-uid", "7"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "needs root (CAP_NET_ADMIN)") {
			t.Fatalf("as uid %d: exit %d, stderr %q", os.Geteuid(), code, errb.String())
		}
		return
	}
	t.Run("unprivileged", func(t *testing.T) {
		self := copyTestBinary(t, sharedTempDir(t))
		cmd := exec.Command(self, "init", "--proxy-uid", "7")
		cmd.Env = []string{reexecEnv + "=1", "PATH=" + os.Getenv("PATH")}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || out.Len() != 0 ||
			errb.String() != "quicmesh init: needs root (CAP_NET_ADMIN) to change iptables rules; running as uid 65534 without it\n" {
			t.Fatalf("as uid 65534: %v, stdout %q, stderr %q", err, out.String(), errb.String())
		}
	})
	t.Run("no iptables", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"init", "--proxy-uid", "7"}, "quicmesh init: iptables not found in PATH (install the iptables package"},
			{[]string{"init", "--undo"}, "quicmesh init: iptables not found in PATH"},
		} {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != 1 || out.Len() != 0 || strings.Count(errb.String(), "\n") != 1 || !strings.HasPrefix(errb.String(), tt.want) {
				t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and %q", tt.args, code, out.String(), errb.String(), tt.want)
			}
		}
	})
}
