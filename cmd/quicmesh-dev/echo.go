package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/echo"
)

// runEcho serves one of the bundled echo apps, the targets of the demo,
// the README's example and the benchmark scenarios.
func runEcho(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev echo", `Usage: quicmesh-dev echo [--proto http1|h2c|grpc|tcp] [--listen ADDR]

Serves a bundled echo app until SIGINT or SIGTERM. HTTP: GET answers
"ok" (or ?size=N bytes), POST echoes the body, and every response tells
which caller identity the sidecar vouched for (Echo-Peer-Identity).
`, stdout, stderr)
	proto := c.Flags.String("proto", "http1", "http1, h2c, grpc or tcp")
	listen := c.Flags.String("listen", "127.0.0.1:8080", "address to listen on (or several, comma-separated)")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	start := map[string]func(string) (*echo.Server, error){
		"http1": echo.ListenHTTP1,
		"h2c":   echo.ListenH2C,
		"grpc":  func(a string) (*echo.Server, error) { return echo.ListenGRPC(a) },
		"tcp":   echo.ListenTCP,
	}[*proto]
	if start == nil {
		return c.Fail("--proto: unknown protocol %q (want http1, h2c, grpc or tcp)", *proto)
	}
	// Signals are caught before the listener exists, so a SIGTERM right
	// after start-up still closes it cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// One app may listen on several ports (comma-separated): the lab's
	// http1 app does, to show each connection arrives on its own port.
	for _, addr := range strings.Split(*listen, ",") {
		srv, err := start(addr)
		if err != nil {
			return c.Fail("--listen %s: %v", addr, err)
		}
		defer srv.Close()
		fmt.Fprintf(stdout, "echo %s listening on %s\n", *proto, srv.Addr())
	}
	<-ctx.Done()
	return cli.ExitOK
}
