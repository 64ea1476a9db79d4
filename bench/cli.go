package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
	"github.com/quicmesh/quicmesh/internal/cli"
)

const usageText = `usage: %s --proto PROTO --target TARGET [flags]

Load generator for quicmesh. PROTO is one of:
  http1        HTTP/1.1 requests (GET, or POST of --payload bytes)   TARGET http://host:port/path
  h2c          cleartext HTTP/2 with prior knowledge, same requests   TARGET http://host:port/path
  grpc         unary calls to quicmesh.bench.Echo/Echo               TARGET host:port
  grpc-stream  message round trips on quicmesh.bench.Echo/Bidi       TARGET host:port
  tcp          echo round trips of --payload bytes (default 64)     TARGET host:port
  tcp-bulk     bulk echo throughput, --payload byte chunks (64 KiB) TARGET host:port

--rate R > 0 runs an open loop at R requests/s with uniform pacing; latency
is measured from each request's intended send time (coordinated omission
corrected). --rate 0 runs a closed loop of --concurrency workers.
`

// Main runs the load generator as the command name (as typed, e.g.
// "quicmesh-dev bench") with args (not including that name), writing results to stdout and diagnostics to stderr.
// It returns the process exit code: 0 when the run completed (even if
// requests failed: see the errors in the result) or for --help, 1 for a
// bad or missing setting or when the run could not be carried out, 2 for a
// malformed command line (see internal/cli). A live progress line is written to
// stderr if it is a terminal. SIGINT ends the run early; the partial
// result is still reported.
func Main(name string, args []string, stdout, stderr io.Writer) int {
	c := cli.New(name, fmt.Sprintf(usageText, name), stdout, stderr)
	fs := c.Flags
	var (
		cfg        Config
		jsonPath   string
		noProgress bool
		quiet      bool
	)
	fs.StringVar(&cfg.Proto, "proto", "", "protocol: http1, h2c, grpc, grpc-stream, tcp, tcp-bulk (required)")
	fs.StringVar(&cfg.Target, "target", "", "target URL (http1, h2c) or host:port (required)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open-loop requests per second; 0 = closed loop")
	fs.DurationVar(&cfg.Duration, "duration", DefaultDuration, "measured duration")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "warmup before the measured duration (not counted)")
	fs.IntVar(&cfg.Concurrency, "concurrency", DefaultConcurrency, "workers, i.e. most requests in flight")
	fs.IntVar(&cfg.Connections, "connections", 0, "connections (0 = concurrency for http1, 1 for h2c/grpc; tcp: one per worker)")
	fs.IntVar(&cfg.Payload, "payload", 0, "request payload bytes (tcp: 0 = 64, tcp-bulk: 0 = 65536)")
	fs.DurationVar(&cfg.Timeout, "timeout", DefaultTimeout, "per-request timeout")
	fs.StringVar(&jsonPath, "json", "", "write the JSON result to this file (- = stdout)")
	fs.Func("pid", "sample CPU and memory of process PID as NAME (NAME=PID, repeatable)", func(s string) error {
		p, err := ParseProc(s)
		if err != nil {
			return err
		}
		cfg.Procs = append(cfg.Procs, p)
		return nil
	})
	fs.BoolVar(&noProgress, "no-progress", false, "no live progress line even on a terminal")
	fs.BoolVar(&quiet, "quiet", false, "no summary table")

	if code, ok := c.Parse(args); !ok {
		return code
	}
	fail := c.Fail
	switch {
	case cfg.Proto == "":
		return fail("--proto is required")
	case cfg.Target == "":
		return fail("--target is required")
	case cfg.Duration <= 0:
		return fail("--duration must be positive")
	case cfg.Concurrency <= 0:
		return fail("--concurrency must be positive")
	case cfg.Timeout <= 0:
		return fail("--timeout must be positive")
	}
	if err := cfg.normalize(); err != nil {
		return fail("%v", err)
	}
	for _, p := range cfg.Procs {
		if _, err := procfs.ReadUsage("/proc", p.PID); err != nil {
			return fail("--pid %s=%d: cannot read process: %v", p.Name, p.PID, err)
		}
	}
	if !noProgress && IsTerminal(stderr) {
		cfg.Progress = stderr
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r, err := Run(ctx, cfg)
	if err != nil {
		return fail("%v", err)
	}

	table := stdout
	if jsonPath == "-" {
		table = stderr
	}
	if !quiet {
		if err := r.WriteTable(table); err != nil {
			return fail("%v", err)
		}
	}
	if jsonPath != "" {
		b, err := r.JSON()
		if err != nil {
			return fail("encoding result: %v", err)
		}
		if jsonPath == "-" {
			_, err = stdout.Write(b)
		} else {
			err = os.WriteFile(jsonPath, b, 0o644)
		}
		if err != nil {
			return fail("--json %s: %v", jsonPath, err)
		}
	}
	return cli.ExitOK
}
