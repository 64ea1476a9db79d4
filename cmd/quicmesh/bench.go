package main

import "io"

func runBench(args []string, stdout, stderr io.Writer) int {
	return fail(stderr, "bench: not built yet")
}
