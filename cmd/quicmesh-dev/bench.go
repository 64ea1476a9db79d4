package main

import (
	"io"

	"github.com/quicmesh/quicmesh/bench"
)

// runBench is the bundled load generator; see bench/SCHEMA.md for its
// JSON output.
func runBench(args []string, stdout, stderr io.Writer) int {
	return bench.Main("quicmesh-dev bench", args, stdout, stderr)
}
