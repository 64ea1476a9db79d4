package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

const defaultGatewayListen = "0.0.0.0:4443"

const gatewayUsage = `Usage: quicmesh gateway --discovery-file FILE --export SERVICE [--export SERVICE ...] [flags]
       quicmesh gateway --discovery-file FILE --export SERVICE ... --print-imports ADVERTISE_ADDR[,ADVERTISE_ADDR...]

Runs a cluster gateway: other clusters' sidecars reach this cluster's
exported services through it. It relays each QUIC connection, by the TLS
server name of the client's first packets, to the sidecar of the endpoint
it names, without terminating TLS: the caller's connection stays end to end
with the destination sidecar, which verifies the caller's certificate
itself (docs/design.md, "Gateway: bridging clusters"). Only endpoints of
--export services are reachable.

--print-imports prints, as a discovery file for the importing cluster, the
exported services with their endpoints reached through the gateway at
ADVERTISE_ADDR (the gateway's address as the other cluster reaches it), and
exits. With several addresses (a cluster's gateways, comma-separated), each
endpoint is listed once per gateway: the importing sidecars balance over
the gateways and fail over when one dies (docs/design.md, "Two gateways
per cluster").

Flags:
`

func runGateway(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh gateway", gatewayUsage, stdout, stderr)
	listen := c.Flags.String("listen", defaultGatewayListen, "UDP `ADDR` other clusters' sidecars send to")
	admin := c.Flags.String("admin", defaultAdmin, "admin `ADDR` (/live, /ready, /metrics)")
	file := c.Flags.String("discovery-file", "", "this cluster's static discovery `FILE` (required)")
	var exports listFlag
	c.Flags.Var(&exports, "export", "a `SERVICE` of this cluster that other clusters may call (repeatable, at least one)")
	printImports := c.Flags.String("print-imports", "", "print the import file for gateways reached at `ADVERTISE_ADDR[,ADVERTISE_ADDR...]` and exit")
	idle := c.Flags.Duration("idle-timeout", gateway.DefaultIdleTimeout, "a flow that carried nothing for this long is forgotten (above the mesh's QUIC idle timeout)")
	maxFlows := c.Flags.Int("max-flows", gateway.DefaultMaxFlows, "most connections relayed at once")
	maxPending := c.Flags.Int("max-pending-flows", gateway.DefaultMaxPendingFlows, "most connections waiting for the rest of their ClientHello")
	maxPendingIP := c.Flags.Int("max-pending-per-ip", gateway.DefaultMaxPendingPerIP, "most connections from one IP address waiting for the rest of their ClientHello")
	logLevel := c.Flags.String("log-level", "info", "debug, info, warn or error")
	logFormat := c.Flags.String("log-format", "text", "text or json")
	cores := c.Flags.Int("cores", 0, coresUsage(0))
	if code, ok := c.Parse(args); !ok {
		return code
	}
	switch {
	case *file == "":
		return c.Fail("--discovery-file is required: the services this gateway exports are resolved there")
	case len(exports) == 0:
		return c.Fail("--export is required: at least one service other clusters may call")
	case *maxFlows <= 0 || *maxPending <= 0 || *maxPendingIP <= 0:
		return c.Fail("--max-flows, --max-pending-flows and --max-pending-per-ip must be positive")
	case *idle <= 0:
		return c.Fail("--idle-timeout must be positive")
	}
	level, ok := logLevels[*logLevel]
	if !ok {
		return c.Fail("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	if *logFormat != "text" && *logFormat != "json" {
		return c.Fail("--log-format %q: want text or json", *logFormat)
	}
	// A gateway carries many peers' traffic: Go's default (every CPU,
	// lowered to a CPU limit), not a sidecar's cap.
	choice, err := processCores(*cores, setFlags(c.Flags)["cores"], 0)
	if err != nil {
		return c.Fail("%v", err)
	}
	if *printImports != "" {
		if err := printImportFile(stdout, *file, exports, *printImports); err != nil {
			return c.Fail("%v", err)
		}
		return cli.ExitOK
	}
	logger, lv := newLogger(stderr, level, *logFormat == "json")
	choice.log(logger)
	if err := serveGateway(logger, lv, *file, exports, *listen, *admin, gateway.Config{
		IdleTimeout: *idle, MaxFlows: *maxFlows, MaxPendingFlows: *maxPending, MaxPendingPerIP: *maxPendingIP,
	}); err != nil {
		return c.Fail("%v", err)
	}
	return cli.ExitOK
}

// serveGateway runs the gateway until SIGINT or SIGTERM.
func serveGateway(logger *slog.Logger, lv *slog.LevelVar, file string, exports []string, listen, adminAddr string, cfg gateway.Config) error {
	res, err := static.New(file, static.Options{Logger: logger})
	if err != nil {
		return err
	}
	defer res.Close()
	for _, svc := range exports {
		if !slices.Contains(res.Services(), svc) {
			return fmt.Errorf("--export %s: no such service in %s", svc, file)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	adm, err := startAdminWith(adminAddr, adminOptions{Registry: reg, LogLevel: lv, Logger: logger})
	if err != nil {
		return fmt.Errorf("--admin %s: %w", adminAddr, err)
	}
	defer adm.Close()
	udp, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	conn, err := net.ListenUDP("udp", udp)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	x := gateway.NewExports(res, exports, logger)
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); x.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	cfg.Conn, cfg.Router, cfg.Logger, cfg.Metrics = conn, x, logger, gateway.NewMetrics(reg)
	relay, err := gateway.New(cfg)
	if err != nil {
		conn.Close()
		return err
	}
	defer relay.Close()
	select {
	case <-x.Ready():
	case <-ctx.Done():
		return nil
	}
	adm.SetReady(true)
	logger.Info("gateway ready", "listen", relay.Addr().String(), "admin", adm.Addr().String(), "exports", exports)
	<-ctx.Done()
	adm.SetReady(false)
	logger.Info("gateway stopping")
	return nil
}

// printImportFile writes the import file for the exported services of
// file, reached through the gateways at advertise (comma-separated).
func printImportFile(w io.Writer, file string, exports []string, advertise string) error {
	gateways := strings.Split(advertise, ",")
	for _, a := range gateways {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("--print-imports %q: %w", a, err)
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("discovery file: %w", err)
	}
	svcs, err := static.ParseServices(data)
	if err != nil {
		return fmt.Errorf("discovery file %s: %w", file, err)
	}
	type service struct {
		Endpoints []discovery.Endpoint `json:"endpoints"`
	}
	out := map[string]service{}
	for _, name := range exports {
		svc, ok := svcs[name]
		if !ok {
			return fmt.Errorf("--export %s: no such service in %s", name, file)
		}
		eps := []discovery.Endpoint{}
		for _, a := range gateways {
			eps = append(eps, gateway.Imports(svc.Endpoints, a)...)
		}
		out[name] = service{Endpoints: eps}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{"services": out})
}
