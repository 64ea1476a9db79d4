// Package clitest checks a command against internal/cli's contract: help
// on stdout with exit 0, and otherwise exactly one line on stderr, nothing
// on stdout, and the expected exit status.
package clitest

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/cli"
)

// Check runs args through run, the command's entry point, as subtest
// name of t, and checks the exit status code and the output: for help
// (cli.ExitOK) usage on stdout containing want and nothing on stderr;
// otherwise nothing on stdout and exactly one line on stderr containing
// want.
func Check(t *testing.T, run func(args []string, stdout, stderr io.Writer) int, name string, args []string, code int, want string) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		var out, errb bytes.Buffer
		got := run(args, &out, &errb)
		stdout, stderr := out.String(), errb.String()
		if got != code {
			t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", got, code, stdout, stderr)
		}
		if code == cli.ExitOK {
			if stderr != "" || !strings.Contains(stdout, want) {
				t.Fatalf("help: stdout %q, stderr %q; want usage on stdout containing %q", stdout, stderr, want)
			}
			return
		}
		if stdout != "" {
			t.Errorf("stdout %q, want nothing", stdout)
		}
		if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") || !strings.Contains(stderr, want) {
			t.Fatalf("stderr %q\nwant exactly one line containing %q", stderr, want)
		}
	})
}
