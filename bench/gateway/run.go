package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench"
	"github.com/quicmesh/quicmesh/bench/scenario"
	"github.com/quicmesh/quicmesh/internal/echo"
)

const (
	trustDomain = "bench.local"
	clientID    = "spiffe://" + trustDomain + "/ns/east/sa/client"
	serverID    = "spiffe://" + trustDomain + "/ns/west/sa/echo"
	// startTimeout bounds a process's start on a machine shared by
	// several agents' builds (load 10-30): seconds of CPU starvation
	// happen, so generous.
	startTimeout = 60 * time.Second
)

// mesh is the running set-up: west's server sidecar and gateway, east's
// client sidecars (one reaching west directly, one through the gateway).
type mesh struct {
	dir        string
	server     *proc
	gateway    *proc
	direct     *proc // client sidecar, in-cluster
	viaGW      *proc // client sidecar, through the gateway
	gwAddr     string
	gwAdmin    string
	serverAddr string
	fronts     map[string]map[string]string // "direct"/"gateway" -> kind -> bind address
	clientStem string
	importFile string
	apps       []*echo.Server
}

func (m *mesh) close() {
	for _, p := range []*proc{m.direct, m.viaGW, m.gateway, m.server} {
		if p != nil {
			p.Stop()
		}
	}
	for _, a := range m.apps {
		a.Close()
	}
}

func runCmd(ctx context.Context, argv ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// setUp starts the apps and the four quicmesh processes, and returns
// once a request goes through each client sidecar.
func setUp(ctx context.Context, cfg config, log *slog.Logger) (m *mesh, err error) {
	m = &mesh{dir: cfg.Work, fronts: map[string]map[string]string{}}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	ca := filepath.Join(cfg.Work, "ca")
	for _, argv := range [][]string{
		{cfg.Bin, "ca", "init", "--dir", ca, "--trust-domain", trustDomain},
		{cfg.Bin, "ca", "issue", "--ca-dir", ca, "--id", clientID, "--name", "client", "--out", filepath.Join(cfg.Work, "east")},
		{cfg.Bin, "ca", "issue", "--ca-dir", ca, "--id", serverID, "--name", "echo", "--out", filepath.Join(cfg.Work, "west")},
	} {
		if _, err := runCmd(ctx, argv...); err != nil {
			return m, err
		}
	}
	m.clientStem = filepath.Join(cfg.Work, "east", "client")
	serverStem := filepath.Join(cfg.Work, "west", "echo")

	h1, err := echo.ListenHTTP1("127.0.0.1:0")
	if err != nil {
		return m, err
	}
	m.apps = append(m.apps, h1)
	tcp, err := echo.ListenTCP("127.0.0.1:0")
	if err != nil {
		return m, err
	}
	m.apps = append(m.apps, tcp)
	apps := map[string]string{"http1": h1.Addr().String(), "tcp": tcp.Addr().String()}

	if m.serverAddr, err = freeAddr(); err != nil {
		return m, err
	}
	// QUIC only on every sidecar: the gateway relays UDP, and the
	// in-cluster path must be the same transport to compare.
	m.server, err = startProc(cfg.Work, "server-sidecar",
		append([]string{cfg.Bin}, scenario.QuicmeshInboundArgs(serverStem, m.serverAddr, "quic", apps)...)...)
	if err != nil {
		return m, err
	}

	services := map[string]scenario.Endpoint{}
	for kind := range apps {
		services[scenario.QuicmeshService(kind)] = scenario.Endpoint{Addr: m.serverAddr, Identity: serverID}
	}
	westFile := filepath.Join(cfg.Work, "west.json")
	b, err := scenario.DiscoveryJSON(services)
	if err != nil {
		return m, err
	}
	if err := os.WriteFile(westFile, b, 0o644); err != nil {
		return m, err
	}
	if m.gwAddr, err = freeAddr(); err != nil {
		return m, err
	}
	if m.gwAdmin, err = freeAddr(); err != nil {
		return m, err
	}
	exports := []string{"--discovery-file", westFile, "--export", scenario.QuicmeshService("http1"), "--export", scenario.QuicmeshService("tcp")}
	imports, err := runCmd(ctx, append(append([]string{cfg.Bin, "gateway"}, exports...), "--print-imports", m.gwAddr)...)
	if err != nil {
		return m, err
	}
	m.importFile = filepath.Join(cfg.Work, "east-imports.json")
	if err := os.WriteFile(m.importFile, imports, 0o644); err != nil {
		return m, err
	}
	m.gateway, err = startProc(cfg.Work, "gateway", append(append([]string{cfg.Bin, "gateway"}, exports...),
		"--listen", m.gwAddr, "--admin", m.gwAdmin, "--log-level", "warn")...)
	if err != nil {
		return m, err
	}
	adminClient := &http.Client{Timeout: 5 * time.Second}
	if err := m.gateway.waitFor(ctx, startTimeout, "the gateway's /ready", func() error {
		return getOK(adminClient, "http://"+m.gwAdmin+"/ready")
	}); err != nil {
		return m, err
	}

	for _, path := range []struct {
		name, file string
		p          **proc
	}{{"direct", westFile, &m.direct}, {"gateway", m.importFile, &m.viaGW}} {
		inbound, err := freeAddr()
		if err != nil {
			return m, err
		}
		fronts := map[string]string{}
		for kind := range apps {
			if fronts[kind], err = freeAddr(); err != nil {
				return m, err
			}
		}
		m.fronts[path.name] = fronts
		*path.p, err = startProc(cfg.Work, "client-sidecar-"+path.name,
			append([]string{cfg.Bin}, scenario.QuicmeshOutboundArgs(m.clientStem, inbound, "quic", path.file, fronts)...)...)
		if err != nil {
			return m, err
		}
	}
	c := &http.Client{Timeout: 10 * time.Second}
	for _, path := range []string{"direct", "gateway"} {
		p := m.direct
		if path == "gateway" {
			p = m.viaGW
		}
		url := "http://" + m.fronts[path]["http1"] + "/"
		if err := p.waitFor(ctx, startTimeout, "a GET through the "+path+" path", func() error { return getOK(c, url) }); err != nil {
			return m, err
		}
	}
	log.Info("set up", "server", m.serverAddr, "gateway", m.gwAddr, "work", cfg.Work)
	return m, nil
}

// procs are the processes sampled during a load on path: the client
// sidecar of that path, the gateway and the server sidecar.
func (m *mesh) procs(path string) []bench.Proc {
	client := m.direct
	if path == "gateway" {
		client = m.viaGW
	}
	return []bench.Proc{{Name: "client", PID: client.PID()}, {Name: "gateway", PID: m.gateway.PID()}, {Name: "server", PID: m.server.PID()}}
}

// load runs one load of the generator on path and checks the processes
// survived it.
func (m *mesh) load(ctx context.Context, path string, c bench.Config) (*Load, error) {
	c.Procs = m.procs(path)
	switch c.Proto {
	case bench.ProtoTCP:
		c.Target = m.fronts[path]["tcp"]
	default:
		c.Target = "http://" + m.fronts[path]["http1"] + "/"
	}
	load1 := loadAvg()
	r, err := bench.Run(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("%s %s load: %w", path, c.Proto, err)
	}
	for _, p := range []*proc{m.server, m.gateway, m.direct, m.viaGW} {
		if p.exited() {
			return nil, p.failure(errors.New("died during the load"))
		}
	}
	return &Load{Path: path, LoadAvgStart: load1, LoadAvgEnd: loadAvg(), Result: r}, nil
}

// run sets up, runs every phase and tears down. The result holds what
// was measured even when a later phase failed.
func run(ctx context.Context, cfg config, log *slog.Logger) (*Result, error) {
	res := &Result{Machine: machine(), Config: cfg}
	m, err := setUp(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	defer m.close()
	if u, err := m.usage(); err == nil {
		res.GatewayIdleRSSKiB = u.RSSKiB
	}

	if cfg.Phases["latency"] {
		if err := latency(ctx, cfg, m, res, log); err != nil {
			return res, err
		}
	}
	if cfg.Phases["capacity"] {
		if err := capacity(ctx, cfg, m, res, log); err != nil {
			return res, err
		}
	}
	if cfg.Phases["tunnels"] {
		if err := tunnels(ctx, cfg, m, res, log); err != nil {
			return res, err
		}
	}
	if cfg.Phases["flows"] {
		log.Info("flows phase", "flows", cfg.Flows)
		f, err := m.flows(ctx, cfg.Flows, log)
		res.Flows = f
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// paths are the two paths in the order round r runs them: alternated, so
// that neither always runs first (on a cold app connection pool, say).
func paths(r int) []string {
	if r%2 == 1 {
		return []string{"gateway", "direct"}
	}
	return []string{"direct", "gateway"}
}

// latency: one request at a time (a closed loop of one worker on one
// connection), directly and through the gateway, --rounds times: the
// hop's added latency without queueing of the load's own making.
func latency(ctx context.Context, cfg config, m *mesh, res *Result, log *slog.Logger) error {
	log.Info("latency phase", "rounds", cfg.Rounds)
	for r := range cfg.Rounds {
		for _, path := range paths(r) {
			l, err := m.load(ctx, path, bench.Config{Proto: bench.ProtoHTTP1,
				Concurrency: 1, Connections: 1, Duration: cfg.Duration, Warmup: cfg.Warmup})
			if err != nil {
				return err
			}
			res.Latency = append(res.Latency, l)
		}
	}
	return nil
}

// capacity: the most requests per second directly and through the
// gateway: a closed loop (each worker sends its next request when the
// last one is answered), which measures what the path reaches without
// the open loop's queue of late requests when it is overloaded.
func capacity(ctx context.Context, cfg config, m *mesh, res *Result, log *slog.Logger) error {
	log.Info("capacity phase", "workers", cfg.Workers, "rounds", cfg.Rounds)
	for r := range cfg.Rounds {
		for _, path := range paths(r) {
			l, err := m.load(ctx, path, bench.Config{Proto: bench.ProtoHTTP1,
				Concurrency: cfg.Workers, Connections: cfg.Workers, Duration: cfg.Duration, Warmup: cfg.Warmup})
			if err != nil {
				return err
			}
			res.Capacity = append(res.Capacity, l)
		}
	}
	return nil
}

// tunnels: --tunnels TCP tunnels held through the gateway.
func tunnels(ctx context.Context, cfg config, m *mesh, res *Result, log *slog.Logger) error {
	log.Info("tunnels phase", "tunnels", cfg.Tunnels)
	// Each tunnel echoes once a second: the point is how many are held,
	// and the warmup gives the generator time to open them all.
	l, err := m.load(ctx, "gateway", bench.Config{Proto: bench.ProtoTCP, Rate: float64(cfg.Tunnels),
		Concurrency: cfg.Tunnels, Duration: cfg.Duration, Warmup: max(cfg.Warmup, 5*time.Second)})
	if err != nil {
		return err
	}
	res.Tunnels = l
	relayed, err := m.gatewayMetric("quicmesh_gateway_flows", `state="relayed"`)
	res.TunnelsGatewayFlows = relayed
	return err
}
