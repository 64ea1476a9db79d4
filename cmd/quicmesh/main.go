// Command quicmesh is the quicmesh sidecar, its certificate authority
// tooling, an all-in-one demo and the load generator.
//
// Every command follows internal/cli's contract: --help prints usage on
// stdout (exit 0), a malformed command line is one line on stderr (exit 2),
// a configuration error is one line naming the flag or key (exit 1).
package main

import (
	"io"
	"os"
	"slices"
	"strings"

	"github.com/quicmesh/quicmesh/internal/cli"
)

const usage = `quicmesh — a service-mesh sidecar that carries app traffic over mutually authenticated QUIC

Usage:
  quicmesh proxy [flags]          run a sidecar (see docs/operations.md)
  quicmesh ca init [flags]        create a certificate authority
  quicmesh ca issue --id ID ...   issue a workload certificate
  quicmesh demo                   run a whole mesh on loopback and check it works
  quicmesh bench [flags]          generate load and measure latency
  quicmesh echo [flags]           serve a bundled echo app (http1, h2c, grpc, tcp)

Run 'quicmesh COMMAND --help' for a command's flags.
`

// commands is the dispatch table; its keys are the only valid commands.
var commands = map[string]func(args []string, stdout, stderr io.Writer) int{
	"proxy": runProxy,
	"ca":    runCA,
	"demo":  runDemo,
	"bench": runBench,
	"echo":  runEcho,
}

func main() {
	// The sidecar reports the UDP buffer sizes it got in its own
	// structured start-up log; quic-go's unstructured warning would only
	// repeat it.
	if os.Getenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING") == "" {
		os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return dispatch(cli.New("quicmesh", usage, stdout, stderr), commands, args, stdout, stderr)
}

// dispatch runs the subcommand named by args[0], or answers help, or
// reports a missing or unknown subcommand in one line.
func dispatch(c *cli.Command, subs map[string]func([]string, io.Writer, io.Writer) int, args []string, stdout, stderr io.Writer) int {
	names := make([]string, 0, len(subs))
	for name := range subs {
		names = append(names, name)
	}
	want := "want " + orList(names)
	switch {
	case len(args) == 0:
		return c.UsageError("missing command (%s)", want)
	case cli.IsHelp(args[0]):
		c.Help()
		return cli.ExitOK
	case strings.HasPrefix(args[0], "-"):
		return c.UsageError("unknown flag %s (%s)", args[0], want)
	}
	sub, ok := subs[args[0]]
	if !ok {
		return c.UsageError("unknown command %q (%s)", args[0], want)
	}
	return sub(args[1:], stdout, stderr)
}

// orList formats names, sorted, as "a, b or c".
func orList(names []string) string {
	names = append([]string(nil), names...)
	slices.Sort(names)
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
