// Command quicmesh-dev holds the tools for trying and measuring quicmesh:
// an all-in-one demo, the bundled echo apps and the load generator. None
// of it runs next to an app, so none of it is linked into the sidecar
// binary, quicmesh (docs/design.md, "Binaries", has the measurements).
//
// Every command follows internal/cli's contract: --help prints usage on
// stdout (exit 0), a malformed command line is one line on stderr (exit 2),
// a configuration error is one line naming the flag (exit 1).
package main

import (
	"io"
	"os"

	"github.com/quicmesh/quicmesh/internal/cli"
)

const usage = `quicmesh-dev — try and measure quicmesh (the sidecar itself is 'quicmesh')

Usage:
  quicmesh-dev demo               run a whole mesh on loopback and check it works
  quicmesh-dev echo [flags]       serve a bundled echo app (http1, h2c, grpc, tcp)
  quicmesh-dev bench [flags]      generate load and measure latency
  quicmesh-dev lab up|status|down a cluster of pods in network namespaces (root)

Run 'quicmesh-dev COMMAND --help' for a command's flags.
`

// commands is the dispatch table; its keys are the only valid commands.
var commands = map[string]cli.Subcommand{
	"demo":  runDemo,
	"echo":  runEcho,
	"bench": runBench,
	"lab":   runLab,
}

func main() {
	// The demo's sidecars report the UDP buffer sizes they got in their
	// structured logs; quic-go's unstructured warning would only repeat it.
	if os.Getenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING") == "" {
		os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.New("quicmesh-dev", usage, stdout, stderr).Dispatch(commands, args)
}
