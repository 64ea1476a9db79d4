// Command gateway measures `quicmesh gateway` for issue 16's record
// (docs/benchmarks.md, "Gateway (issue 16)"): every part runs as its own
// process on loopback — a client sidecar, the gateway, a server sidecar —
// as in two clusters whose only link is the gateway, and the same client
// and server sidecars without the gateway (in-cluster) side by side.
//
//	go build -o bin/quicmesh ./cmd/quicmesh
//	go run ./bench/gateway --bin bin/quicmesh --json bench/out/gateway.json
//
// Phases, each with the CPU and RSS of the three processes sampled from
// /proc (bench.Procs):
//
//  1. latency: HTTP/1.1 GETs one at a time, client sidecar → server
//     sidecar vs client sidecar → gateway → server sidecar, --rounds
//     rounds of each in alternating order: the gateway hop's added
//     latency and CPU per request;
//  2. capacity: HTTP/1.1 in a closed loop of --workers, through the
//     gateway and directly: what the hop reaches here (issue 16 asks for
//     5,000 req/s);
//  3. tunnels: --tunnels TCP tunnels held at once through the gateway,
//     each echoing once a second: the gateway's RSS with them (one QUIC
//     connection carries them all: one gateway flow);
//  4. flows: --flows QUIC connections through the gateway, each from its
//     own UDP socket (as from that many sidecars) holding one tunnel: the
//     gateway's RSS and heap per flow, which is what grows with load.
//
// The echo apps and the load generator (package bench) run in this
// process; their CPU is not in the figures.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(cliMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// config is the command line.
type config struct {
	Bin      string
	Work     string
	Duration time.Duration
	Warmup   time.Duration
	Rounds   int
	Workers  int
	Tunnels  int
	Flows    int
	Phases   map[string]bool
}

// phases are the measurements, in the order they run.
var phases = []string{"latency", "capacity", "tunnels", "flows"}

func cliMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config{}
	fs.StringVar(&cfg.Bin, "bin", "bin/quicmesh", "the quicmesh binary (go build -o bin/quicmesh ./cmd/quicmesh)")
	fs.StringVar(&cfg.Work, "work", "", "directory in which each run makes its own for certificates, discovery files and process logs, kept (default: a temporary one, removed at the end)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured window of each load")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "uncounted warmup before each load")
	fs.IntVar(&cfg.Rounds, "rounds", 2, "latency and capacity phases: rounds of each path (the order alternates)")
	fs.IntVar(&cfg.Workers, "workers", 64, "capacity phase: closed-loop workers, each on its own connection")
	fs.IntVar(&cfg.Tunnels, "tunnels", 1000, "tunnels phase: TCP tunnels held at once")
	fs.IntVar(&cfg.Flows, "flows", 1000, "flows phase: QUIC connections through the gateway ")
	only := fs.String("phases", strings.Join(phases, ","), "comma-separated phases to run, of "+strings.Join(phases, ", "))
	jsonOut := fs.String("json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gateway: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if cfg.Rounds < 1 || cfg.Workers < 1 || cfg.Tunnels < 1 || cfg.Flows < 1 || cfg.Duration <= 0 {
		fmt.Fprintln(stderr, "gateway: --rounds, --workers, --tunnels and --flows and --duration must be positive")
		return 2
	}
	cfg.Phases = map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		if !slices.Contains(phases, p) {
			fmt.Fprintf(stderr, "gateway: --phases: unknown phase %q (want some of %s)\n", p, strings.Join(phases, ", "))
			return 2
		}
		cfg.Phases[p] = true
	}
	if cfg.Work == "" {
		dir, err := os.MkdirTemp("", "quicmesh-gwbench-")
		if err != nil {
			fmt.Fprintf(stderr, "gateway: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		cfg.Work = dir
	} else {
		// A new directory per run inside it: kept (the processes' logs
		// are there), and a second run never meets the first's CA.
		if err := os.MkdirAll(cfg.Work, 0o755); err != nil {
			fmt.Fprintf(stderr, "gateway: %v\n", err)
			return 1
		}
		dir, err := os.MkdirTemp(cfg.Work, "run-")
		if err != nil {
			fmt.Fprintf(stderr, "gateway: %v\n", err)
			return 1
		}
		cfg.Work = dir
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	res, err := run(ctx, cfg, log)
	if res != nil {
		res.writeMarkdown(stdout)
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintf(stderr, "gateway: writing %s: %v\n", *jsonOut, werr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 1
	}
	return 0
}
