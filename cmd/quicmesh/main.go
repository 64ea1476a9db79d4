// Command quicmesh is the quicmesh sidecar and its certificate authority
// tooling. The demo, the echo apps and the load generator are in
// quicmesh-dev, so that the binary deployed next to every app links only
// what it runs (docs/design.md, "Binaries").
//
// Every command follows internal/cli's contract: --help prints usage on
// stdout (exit 0), a malformed command line is one line on stderr (exit 2),
// a configuration error is one line naming the flag or key (exit 1).
package main

import (
	"io"
	"os"

	"github.com/quicmesh/quicmesh/internal/cli"
)

const usage = `quicmesh — a service-mesh sidecar that carries app traffic over mutually authenticated QUIC

Usage:
  quicmesh proxy [flags]          run a sidecar (see docs/operations.md)
  quicmesh gateway [flags]        relay other clusters' sidecars to exported services
  quicmesh init --proxy-uid UID   redirect a pod's TCP through its sidecar (iptables; root)
  quicmesh inject -f FILE         add the sidecar to Kubernetes workloads (YAML)
  quicmesh ca init [flags]        create a certificate authority
  quicmesh ca issue --id ID ...   issue a workload certificate

Run 'quicmesh COMMAND --help' for a command's flags. The demo, the echo
apps and the load generator are 'quicmesh-dev demo|echo|bench'.
`

// commands is the dispatch table; its keys are the only valid commands.
var commands = map[string]cli.Subcommand{
	"proxy":   runProxy,
	"gateway": runGateway,
	"ca":      runCA,
	"init":    runInit,
	"inject":  runInject,
}

// movedToDev are the commands quicmesh-dev runs, for a pointer to it
// instead of a bare "unknown command".
var movedToDev = map[string]bool{"demo": true, "echo": true, "bench": true}

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
	c := cli.New("quicmesh", usage, stdout, stderr)
	if len(args) > 0 && movedToDev[args[0]] {
		return c.UsageError("%q is a quicmesh-dev command: run 'quicmesh-dev %s'", args[0], args[0])
	}
	return c.Dispatch(commands, args)
}
