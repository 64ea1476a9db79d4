package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/proxy/detect"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/proxy/telemetry"
	"github.com/quicmesh/quicmesh/transport"
)

// Default ports: the same numbers Linkerd uses, so operators find them where they expect.
const (
	defaultInbound = "0.0.0.0:4143"
	defaultAdmin   = "127.0.0.1:4191"
	defaultHTTP    = "127.0.0.1:4140"
)

type proxyFlags struct {
	config, cert, key, bundle, trustDomain string
	inbound, admin, discoveryFile          string
	httpProxy                              string
	detectTimeout                          time.Duration
	logLevel, logFormat                    string
	routes, binds                          mapFlag
	connectTimeout, grace                  time.Duration
	allowShutdown                          bool
	qlogDir                                string
}

const proxyUsage = `Usage: quicmesh proxy --cert FILE --key FILE --bundle FILE [flags]

Runs a sidecar: --route SERVICE=APP_ADDR serves a local app to the mesh,
--bind LISTEN_ADDR=SERVICE gives the local app a listener for a mesh
service, and the HTTP proxy listener (--http-proxy) routes each request by
its URL host. Every flag and config key: docs/operations.md.
`

func runProxy(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh proxy", proxyUsage, stdout, stderr)
	fs := c.Flags
	f := proxyFlags{
		routes: mapFlag{want: "SERVICE=APP_ADDR"},
		binds:  mapFlag{want: "LISTEN_ADDR=SERVICE[,opaque]"},
	}
	fs.StringVar(&f.config, "config", "", "JSON config file (flags override it)")
	fs.StringVar(&f.cert, "cert", "", "workload certificate (PEM, SPIFFE ID in the URI SAN)")
	fs.StringVar(&f.key, "key", "", "workload private key (PEM)")
	fs.StringVar(&f.bundle, "bundle", "", "trust bundle: CA certificates (PEM)")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "accept peers from this trust domain (default: our own)")
	fs.StringVar(&f.inbound, "inbound", defaultInbound, "UDP address for mesh traffic (inbound and outbound QUIC)")
	fs.StringVar(&f.admin, "admin", defaultAdmin, "admin HTTP address (/live, /ready, /metrics, /debug/pprof/, /log-level, /shutdown); empty disables")
	fs.StringVar(&f.discoveryFile, "discovery-file", "", "static discovery file (JSON), reloaded on change")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.Var(&f.routes, "route", "SERVICE=APP_ADDR served by this sidecar's app (repeatable)")
	fs.Var(&f.binds, "bind", "LISTEN_ADDR=SERVICE[,opaque] outbound listener for a service (repeatable); opaque skips protocol detection")
	fs.StringVar(&f.httpProxy, "http-proxy", defaultHTTP, "outbound HTTP proxy listener (absolute-form URIs and CONNECT; the URL host is the service name); empty disables. Two sidecars on one host need different ports")
	fs.DurationVar(&f.detectTimeout, "detect-timeout", time.Second, "how long to wait for an app's first bytes before treating it as opaque TCP")
	fs.DurationVar(&f.grace, "grace", 30*time.Second, "on SIGTERM, how long in-flight requests and tunnels may take to finish")
	fs.StringVar(&f.qlogDir, "qlog-dir", "", "write a qlog trace per QUIC connection into this directory (debugging; costly)")
	fs.BoolVar(&f.allowShutdown, "admin-shutdown", false, "allow POST /shutdown on the admin server to start a graceful shutdown")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "bound on reaching a peer for one connection (default 5s)")
	if code, ok := c.Parse(args); !ok {
		return code
	}

	// Nothing is logged until everything is validated, bound and running:
	// a sidecar that fails to start prints its one error line and nothing
	// else, in particular no "started".
	logs := newStartupLog(stderr)
	cfg, closeAll, err := buildProxyConfig(fs, &f, logs)
	if err != nil {
		return c.Fail("%v", err)
	}
	defer closeAll()
	log := cfg.sidecar.Logger

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.sidecar.Metrics = telemetry.New(reg)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The admin server is bound first, answering /ready with 503, so that
	// a taken admin port fails the start-up before anything is served.
	var admin *adminServer
	if cfg.admin != "" {
		admin, err = startAdminWith(cfg.admin, adminOptions{
			Registry:      reg,
			LogLevel:      cfg.logLevel,
			AllowShutdown: f.allowShutdown,
			Shutdown:      stop,
			Logger:        log,
		})
		if err != nil {
			return c.Fail("%v", cfg.names.explainStartError(err))
		}
		defer admin.Close()
	}
	sc, err := sidecar.Start(cfg.sidecar)
	if err != nil {
		return c.Fail("%v", cfg.names.explainStartError(err))
	}
	defer sc.Close()

	// Readiness is reported only once identity is loaded and every
	// listener is bound, i.e. after Start returns.
	logs.release()
	if admin != nil {
		admin.SetReady(true)
	}
	log.Info("ready", "inbound", sc.InboundAddr().String(), "admin", cfg.admin)

	<-ctx.Done()
	stop()
	if admin != nil {
		admin.SetReady(false)
	}
	log.Info("shutting down", "grace", f.grace.String())
	gctx, cancel := context.WithTimeout(context.Background(), f.grace)
	defer cancel()
	if err := sc.Shutdown(gctx); err != nil {
		log.Warn("shutdown", "error", err)
	}
	log.Info("stopped")
	return cli.ExitOK
}

type proxyConfig struct {
	sidecar  sidecar.Config
	admin    string
	logLevel *slog.LevelVar
	names    settingNames
}

// buildProxyConfig merges file and flags, validates every setting and
// constructs the concrete identity provider and resolver. Every error is
// one line naming the flag or config key at fault.
func buildProxyConfig(fs *flag.FlagSet, f *proxyFlags, logOut io.Writer) (_ *proxyConfig, _ func(), err error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	fc := &fileConfig{}
	if f.config != "" {
		if fc, err = loadConfigFile(f.config); err != nil {
			return nil, nil, err
		}
	}
	set := setFlags(fs)
	pick := func(flagName, flagVal, fileVal string) string {
		if set[flagName] || fileVal == "" {
			return flagVal
		}
		return fileVal
	}
	// name is how an error refers to a setting: the flag, unless the
	// value came from the config file.
	name := func(flagName, key string, fromFile bool) string {
		if set[flagName] || !fromFile {
			return "--" + flagName
		}
		return fmt.Sprintf("config %q", key)
	}

	logger, level, err := newLogger(logOut, pick("log-level", f.logLevel, fc.Log.Level), pick("log-format", f.logFormat, fc.Log.Format))
	if err != nil {
		if errors.Is(err, errLogFormat) {
			return nil, nil, fmt.Errorf("%s: %w", name("log-format", "log.format", fc.Log.Format != ""), err)
		}
		return nil, nil, fmt.Errorf("%s: %w", name("log-level", "log.level", fc.Log.Level != ""), err)
	}

	cert, key, bundle := pick("cert", f.cert, fc.Identity.Cert), pick("key", f.key, fc.Identity.Key), pick("bundle", f.bundle, fc.Identity.Bundle)
	switch {
	case cert == "":
		return nil, nil, errors.New("no workload certificate: set --cert (or identity.cert); quicmesh never runs without mTLS")
	case key == "":
		return nil, nil, errors.New("no private key: set --key (or identity.key)")
	case bundle == "":
		return nil, nil, errors.New("no trust bundle: set --bundle (or identity.bundle)")
	}
	prov, err := identity.NewFileProvider(cert, key, bundle, identity.FileOptions{Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("%s, %s, %s: %w", name("cert", "identity.cert", fc.Identity.Cert != ""),
			name("key", "identity.key", fc.Identity.Key != ""), name("bundle", "identity.bundle", fc.Identity.Bundle != ""), err)
	}
	closers = append(closers, func() { prov.Close() })
	localID, err := identity.LocalID(prov)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name("cert", "identity.cert", fc.Identity.Cert != ""), err)
	}
	td := pick("trust-domain", f.trustDomain, fc.Identity.TrustDomain)
	if td == "" {
		td = localID.TrustDomain
	}

	routes := inbound.Routes{}
	for svc, addr := range fc.Inbound.Routes {
		if _, _, err := inbound.ParseAppAddr(addr); err != nil {
			return nil, nil, fmt.Errorf("config %q: %w", "inbound.routes."+svc, err)
		}
		routes[svc] = addr
	}
	for _, svc := range f.routes.order {
		addr := f.routes.m[svc]
		if _, _, err := inbound.ParseAppAddr(addr); err != nil {
			return nil, nil, fmt.Errorf("--route %s=%s: %w", svc, addr, err)
		}
		routes[svc] = addr
	}

	names := settingNames{
		inbound:   name("inbound", "inbound.listen", fc.Inbound.Listen != ""),
		admin:     name("admin", "admin.listen", fc.Admin.Listen != ""),
		httpProxy: name("http-proxy", "outbound.http_proxy", fc.Outbound.HTTPProxy != nil),
	}
	var binds []sidecar.Bind
	for i, b := range fc.Outbound.Binds {
		setting := fmt.Sprintf("config %q", fmt.Sprintf("outbound.binds[%d]", i))
		if b.Listen == "" || b.Service == "" {
			return nil, nil, fmt.Errorf("%s: needs both \"listen\" and \"service\"", setting)
		}
		binds = append(binds, sidecar.Bind{Listen: b.Listen, Service: b.Service, Opaque: b.Opaque})
		names.binds = append(names.binds, setting)
	}
	for _, listen := range f.binds.order {
		svc, opt, _ := strings.Cut(f.binds.m[listen], ",")
		setting := "--bind " + listen + "=" + f.binds.m[listen]
		if svc == "" {
			return nil, nil, fmt.Errorf("%s: no service name (want LISTEN_ADDR=SERVICE[,opaque])", setting)
		}
		if opt != "" && opt != "opaque" {
			return nil, nil, fmt.Errorf("%s: unknown option %q (want opaque)", setting, opt)
		}
		binds = append(binds, sidecar.Bind{Listen: listen, Service: svc, Opaque: opt == "opaque"})
		names.binds = append(names.binds, setting)
	}

	inboundAddr := pick("inbound", f.inbound, fc.Inbound.Listen)
	adminAddr := pick("admin", f.admin, fc.Admin.Listen)
	httpProxy := f.httpProxy
	if !set["http-proxy"] && fc.Outbound.HTTPProxy != nil {
		httpProxy = *fc.Outbound.HTTPProxy
	}
	// Each listening address, as the operator wrote it: its flag or key
	// and the address.
	names.listeners = []listenSetting{
		{names.inbound + " " + inboundAddr, inboundAddr},
		{names.admin + " " + adminAddr, adminAddr},
		{names.httpProxy + " " + httpProxy, httpProxy},
	}
	for i, b := range binds {
		names.listeners = append(names.listeners, listenSetting{names.binds[i], b.Listen})
	}
	for i, l := range names.listeners {
		if l.addr == "" && i > 0 {
			continue // the admin server or HTTP proxy, disabled
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return nil, nil, fmt.Errorf("%s: not a HOST:PORT address", l.setting)
		}
	}

	var res discovery.Resolver
	discoFile := pick("discovery-file", f.discoveryFile, fc.Discovery.Static)
	discoName := name("discovery-file", "discovery.static", fc.Discovery.Static != "")
	if discoFile != "" {
		sr, err := static.New(discoFile, static.Options{Logger: logger})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", discoName, err)
		}
		closers = append(closers, func() { sr.Close() })
		res = sr
	} else {
		res = static.NewFromMap(nil)
	}
	// A bind for a service discovery has never heard of is a typo, not
	// something to discover at the first connection.
	for i, b := range binds {
		w, err := res.Resolve(context.Background(), b.Service)
		switch {
		case errors.Is(err, discovery.ErrUnknownService) && discoFile == "":
			return nil, nil, fmt.Errorf("%s: service %q is unknown: there is no discovery file (--discovery-file)", names.binds[i], b.Service)
		case errors.Is(err, discovery.ErrUnknownService):
			return nil, nil, fmt.Errorf("%s: service %q is not in the discovery file %s", names.binds[i], b.Service, discoFile)
		case err != nil:
			return nil, nil, fmt.Errorf("%s: %w", names.binds[i], err)
		}
		w.Close()
	}

	limits := transport.Limits{
		MaxIncomingStreams:      fc.Limits.MaxStreamsPerPeer,
		StreamReceiveWindow:     fc.Limits.StreamWindowBytes,
		ConnectionReceiveWindow: fc.Limits.ConnWindowBytes,
		HandshakeTimeout:        fc.Limits.HandshakeTimeout.Duration,
		IdleTimeout:             fc.Limits.IdleTimeout.Duration,
		KeepAlive:               fc.Limits.KeepAlive.Duration,
	}
	detectTimeout := f.detectTimeout
	if !set["detect-timeout"] && fc.Outbound.DetectTimeout.Duration > 0 {
		detectTimeout = fc.Outbound.DetectTimeout.Duration
	}
	connectTimeout := f.connectTimeout
	if !set["connect-timeout"] && fc.Limits.ConnectTimeout.Duration > 0 {
		connectTimeout = fc.Limits.ConnectTimeout.Duration
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"detect-timeout", detectTimeout}, {"connect-timeout", connectTimeout}, {"grace", f.grace}} {
		if d.v < 0 {
			return nil, nil, fmt.Errorf("--%s %s: must not be negative", d.flag, d.v)
		}
	}
	cfg := &proxyConfig{
		sidecar: sidecar.Config{
			Identity:      prov,
			Resolver:      res,
			Authorize:     identity.AuthorizeTrustDomain(td),
			InboundAddr:   inboundAddr,
			Routes:        routes,
			Binds:         binds,
			HTTPProxyAddr: httpProxy,
			QlogDir:       pick("qlog-dir", f.qlogDir, fc.Debug.QlogDir),
			Outbound: outbound.Config{
				ConnectTimeout: connectTimeout,
				Detect:         detect.Config{Timeout: detectTimeout},
				MaxInFlight:    fc.Outbound.MaxInFlight,
				HeaderTimeout:  fc.Limits.HeaderTimeout.Duration,
				IdleTimeout:    fc.Limits.AppIdleTimeout.Duration,
				MaxHeaderBytes: fc.Limits.MaxHeaderBytes,
			},
			Inbound: inbound.Config{
				ConnectTimeout: fc.Limits.AppConnectTimeout.Duration,
				HeaderTimeout:  fc.Limits.HeaderTimeout.Duration,
				MaxInFlight:    fc.Limits.InboundMaxInFlight,
			},
			Limits: limits,
			Logger: logger.With("id", localID.String()),
		},
		admin:    adminAddr,
		logLevel: level,
		names:    names,
	}
	return cfg, closeAll, nil
}

// settingNames records how the operator spelled each listening address
// (a flag or a config key), so a bind failure at start-up names it.
type settingNames struct {
	inbound, admin, httpProxy string
	binds                     []string // parallel to sidecar.Config.Binds
	listeners                 []listenSetting
}

// listenSetting is a listening address and how an error names it, e.g.
// "--http-proxy 127.0.0.1:4140" or "--bind 127.0.0.1:7001=echo".
type listenSetting struct{ setting, addr string }

// explainStartError turns a listener that could not be bound into one
// line naming its setting; other errors are returned as they are.
func (n settingNames) explainStartError(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "listen" || op.Addr == nil {
		return err
	}
	for _, l := range n.listeners {
		if l.addr == "" || !sameListenAddr(op, l.addr) {
			continue
		}
		hint := ""
		if errors.Is(err, syscall.EADDRINUSE) {
			hint = " (in use by another process: two sidecars on one host need different ports"
			if strings.HasPrefix(l.setting, "--http-proxy ") {
				hint += `, or --http-proxy "" disables this listener`
			}
			hint += ")"
		}
		return fmt.Errorf("%s: %v%s", l.setting, op.Err, hint)
	}
	return err
}

// sameListenAddr reports whether the address a listen failed on is the
// configured addr (which may name a host instead of an IP).
func sameListenAddr(op *net.OpError, addr string) bool {
	if op.Addr.String() == addr {
		return true
	}
	var resolved net.Addr
	var err error
	switch op.Addr.(type) {
	case *net.UDPAddr:
		resolved, err = net.ResolveUDPAddr("udp", addr)
	case *net.TCPAddr:
		resolved, err = net.ResolveTCPAddr("tcp", addr)
	default:
		return false
	}
	return err == nil && resolved.String() == op.Addr.String()
}

// startupLog holds a process's log output until start-up has succeeded,
// so that a start-up that fails prints only its error line; release
// writes what was held and lets later output through.
type startupLog struct {
	mu   sync.Mutex
	out  io.Writer
	held *bytes.Buffer // nil once released
}

func newStartupLog(out io.Writer) *startupLog {
	return &startupLog{out: out, held: new(bytes.Buffer)}
}

func (l *startupLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held != nil {
		return l.held.Write(p)
	}
	return l.out.Write(p)
}

func (l *startupLog) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held != nil {
		l.out.Write(l.held.Bytes())
		l.held = nil
	}
}
