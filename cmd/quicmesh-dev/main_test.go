package main

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/cli/clitest"
)

func TestDemo(t *testing.T) {
	var out, errs bytes.Buffer
	// Each check may take what is left of the test's own deadline: under
	// the race detector on a loaded machine the 8 MiB echoes take minutes.
	args := []string{"demo"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "--timeout", time.Until(d).Round(time.Second).String())
	}
	if code := run(args, &out, &errs); code != 0 {
		t.Fatalf("demo failed (%d):\n%s\n%s", code, &out, &errs)
	}
	for _, want := range []string{"tcp: 16 MiB each way", "grpc: bidi streaming", "demo passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

// quicmesh-dev keeps internal/cli's contract, like quicmesh (see
// cmd/quicmesh's TestCommandLineContract).
func TestCommandLineContract(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	inUse := taken.Addr().String()
	const (
		help   = 0
		config = 1
		usage  = 2
	)
	tests := []struct {
		name string
		args []string
		code int
		want string // on stdout for help, in the one stderr line otherwise
	}{
		{"quicmesh-dev --help", []string{"--help"}, help, "quicmesh-dev bench [flags]"},
		{"quicmesh-dev", nil, usage, "quicmesh-dev: missing command (want bench, demo, echo or lab); see 'quicmesh-dev --help'"},
		{"quicmesh-dev unknown command", []string{"proxy"}, usage, `quicmesh-dev: unknown command "proxy"`},
		{"quicmesh-dev unknown flag", []string{"--frob"}, usage, "quicmesh-dev: unknown flag --frob"},

		{"demo --help", []string{"demo", "--help"}, help, "Usage: quicmesh-dev demo"},
		{"demo unknown flag", []string{"demo", "--frob"}, usage, "quicmesh-dev demo: unknown flag --frob"},
		{"demo unexpected argument", []string{"demo", "now"}, usage, `quicmesh-dev demo: unexpected argument "now"`},

		{"echo --help", []string{"echo", "--help"}, help, "-proto string"},
		{"echo unknown flag", []string{"echo", "--frob"}, usage, "quicmesh-dev echo: unknown flag --frob"},
		{"echo unexpected argument", []string{"echo", "x"}, usage, `quicmesh-dev echo: unexpected argument "x"`},
		{"echo bad proto", []string{"echo", "--proto", "ftp"}, config, `quicmesh-dev echo: --proto: unknown protocol "ftp"`},
		{"echo port taken", []string{"echo", "--listen", inUse}, config, "quicmesh-dev echo: --listen " + inUse + ": "},

		{"bench --help", []string{"bench", "--help"}, help, "usage: quicmesh-dev bench"},
		{"bench unknown flag", []string{"bench", "--frob"}, usage, "quicmesh-dev bench: unknown flag --frob"},
		{"bench unexpected argument", []string{"bench", "--proto", "tcp", "--target", "x:1", "y"}, usage, `quicmesh-dev bench: unexpected argument "y"`},
		{"bench no proto", []string{"bench"}, config, "quicmesh-dev bench: --proto is required"},
		{"bench bad rate", []string{"bench", "--proto", "tcp", "--target", "x:1", "--rate", "fast"}, config, `quicmesh-dev bench: --rate: invalid value "fast"`},

		{"lab --help", []string{"lab", "--help"}, help, "quicmesh-dev lab up [flags]"},
		{"lab", []string{"lab"}, usage, "quicmesh-dev lab: missing command (want call, demo, down, status or up)"},
		{"lab unknown command", []string{"lab", "frob"}, usage, `quicmesh-dev lab: unknown command "frob"`},
		{"lab up --help", []string{"lab", "up", "--help"}, help, "-intercept"},
		{"lab up unknown flag", []string{"lab", "up", "--frob"}, usage, "quicmesh-dev lab up: unknown flag --frob"},
		{"lab up bad name", []string{"lab", "up", "--name", "Lab 1"}, config, `quicmesh-dev lab up: --name "Lab 1": want a lower-case name`},
		{"lab up too many pods", []string{"lab", "up", "--pods", "27"}, config, `quicmesh-dev lab up: --pods "27": want 1 to 26 pods`},
		{"lab up bad pod name", []string{"lab", "up", "--pods", "a,B"}, config, `--pods "a,B": pod name "B"`},
		{"lab up same uids", []string{"lab", "up", "--app-uid", "7", "--proxy-uid", "7"}, config, "--app-uid 7, --proxy-uid 7: want two different UIDs"},
		{"lab up bad subnet", []string{"lab", "up", "--subnet", "10.0.0.0"}, config, "quicmesh-dev lab up: --subnet: "},
		{"lab status unexpected argument", []string{"lab", "status", "x"}, usage, `quicmesh-dev lab status: unexpected argument "x"`},
		{"lab status not up", []string{"lab", "status", "--name", "never-up"}, config, `quicmesh-dev lab status: lab "never-up" is not up`},
		{"lab down --help", []string{"lab", "down", "--help"}, help, "-timeout duration"},
	}
	for _, tt := range tests {
		clitest.Check(t, run, tt.name, tt.args, tt.code, tt.want)
	}
}
