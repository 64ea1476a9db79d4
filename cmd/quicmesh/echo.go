package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/quicmesh/quicmesh/bench/echo"
)

// runEcho serves one of the bundled echo apps, the targets of the demo and
// the benchmark scenarios.
func runEcho(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quicmesh echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	proto := fs.String("proto", "http1", "http1, h2c, grpc or tcp")
	listen := fs.String("listen", "127.0.0.1:8080", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	start := map[string]func(string) (*echo.Server, error){
		"http1": echo.ListenHTTP1,
		"h2c":   echo.ListenH2C,
		"grpc":  func(a string) (*echo.Server, error) { return echo.ListenGRPC(a) },
		"tcp":   echo.ListenTCP,
	}[*proto]
	if start == nil {
		return fail(stderr, "echo: unknown --proto %q (want http1, h2c, grpc or tcp)", *proto)
	}
	srv, err := start(*listen)
	if err != nil {
		return fail(stderr, "echo: %v", err)
	}
	defer srv.Close()
	fmt.Fprintf(stdout, "echo %s listening on %s\n", *proto, srv.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}
