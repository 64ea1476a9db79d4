// Command quicmesh is the quicmesh sidecar, its certificate authority
// tooling, an all-in-one demo and the load generator.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `quicmesh — a service-mesh sidecar that carries app traffic over mutually authenticated QUIC

Usage:
  quicmesh proxy [flags]          run a sidecar (see docs/operations.md)
  quicmesh ca init [flags]        create a certificate authority
  quicmesh ca issue --id ID ...   issue a workload certificate
  quicmesh demo                   run a whole mesh on loopback and check it works
  quicmesh bench [flags]          generate load and measure latency
  quicmesh echo [flags]           serve a bundled echo app (http1, h2c, grpc, tcp)

Run 'quicmesh COMMAND -h' for a command's flags.
`

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
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "proxy":
		return runProxy(args[1:], stdout, stderr)
	case "ca":
		return runCA(args[1:], stdout, stderr)
	case "demo":
		return runDemo(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "echo":
		return runEcho(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "quicmesh: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// fail prints one clear error line and returns the exit status for it.
func fail(stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "quicmesh: "+format+"\n", a...)
	return 1
}
