// Command controlplane measures quicmesh-control at scale, for issue 14's
// "Record" (docs/benchmarks.md, "Control plane (issue 14)"): it starts a
// real kube-apiserver + etcd (internal/kubetest), creates SERVICES
// Services, each with an EndpointSlice of ENDPOINTS pods, starts
// quicmesh-control as a separate process with the RBAC of deploy/kubernetes,
// connects SIDECARS simulated sidecars (each certifies with its own
// ServiceAccount token, then follows the catalog with WatchIndex and a few
// services with Watch, over its own TLS connection, as `quicmesh proxy
// --control` does), and reads the control plane's RSS (/proc/PID/status
// VmRSS, VmHWM) and CPU (/proc/PID/stat utime+stime) in phases: caches
// synced with no sidecar, sidecars connecting, steady state, and a churn
// of EndpointSlice changes whose delivery to every watcher it times.
//
//	export QUICMESH_K8S_BIN=$(bash .ci/k8s.sh)
//	go run ./bench/controlplane -services 1000 -endpoints 10 -sidecars 200
//
// The simulated sidecars keep no state beyond counters, so the bench
// process's own memory does not grow with the catalog; the figures are the
// control plane's alone (its process, not the bench's).
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
	"syscall"
	"time"

	"github.com/quicmesh/quicmesh/internal/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(cliMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func cliMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := defaultConfig()
	fs.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "namespace of the objects the run creates")
	fs.IntVar(&cfg.Services, "services", cfg.Services, "Services, each with one EndpointSlice")
	fs.IntVar(&cfg.Endpoints, "endpoints", cfg.Endpoints, "endpoints (pods) per service")
	fs.IntVar(&cfg.Sidecars, "sidecars", cfg.Sidecars, "simulated sidecars, each on its own connection")
	fs.IntVar(&cfg.WatchesPerSidecar, "watches", cfg.WatchesPerSidecar, "services each sidecar follows with Watch")
	fs.BoolVar(&cfg.Index, "index", cfg.Index, "each sidecar also follows the catalog (WatchIndex), as the transparent path does")
	fs.DurationVar(&cfg.Idle, "idle", cfg.Idle, "measured window with caches synced and no sidecar")
	fs.DurationVar(&cfg.Steady, "steady", cfg.Steady, "measured window with every sidecar watching and nothing changing")
	fs.DurationVar(&cfg.Churn, "churn", cfg.Churn, "churn window: EndpointSlice updates at -rate")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "EndpointSlice updates per second during the churn")
	fs.StringVar(&cfg.ControlBin, "control-bin", "", "quicmesh-control binary (default: go build ./cmd/quicmesh-control into a temporary directory)")
	jsonOut := fs.String("json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(stderr, "controlplane:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	bin, err := kubetest.Binaries()
	if err != nil {
		fmt.Fprintln(stderr, "controlplane:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "quicmesh-cpbench-")
	if err != nil {
		fmt.Fprintln(stderr, "controlplane:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if cfg.ControlBin == "" {
		logger.Info("building quicmesh-control")
		if cfg.ControlBin, err = buildControl(ctx, dir); err != nil {
			fmt.Fprintln(stderr, "controlplane:", err)
			return 1
		}
	}
	logger.Info("starting kube-apiserver and etcd", "bin", bin)
	cluster, err := kubetest.Start(bin)
	if err != nil {
		fmt.Fprintln(stderr, "controlplane:", err)
		return 1
	}
	defer cluster.Stop()
	res, err := Run(ctx, cluster, dir, cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "controlplane:", err)
		return 1
	}
	res.Print(stdout)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(stderr, "controlplane:", err)
			return 1
		}
	}
	return 0
}

func defaultConfig() Config {
	return Config{
		Namespace: "cpbench", Services: 1000, Endpoints: 10, Sidecars: 200, WatchesPerSidecar: 5, Index: true,
		Idle: 10 * time.Second, Steady: 30 * time.Second, Churn: 30 * time.Second, Rate: 10,
	}
}
