package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
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

func runProxy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quicmesh proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f proxyFlags
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
	fs.StringVar(&f.httpProxy, "http-proxy", defaultHTTP, "outbound HTTP proxy listener (absolute-form URIs and CONNECT); empty disables")
	fs.DurationVar(&f.detectTimeout, "detect-timeout", time.Second, "how long to wait for an app's first bytes before treating it as opaque TCP")
	fs.DurationVar(&f.grace, "grace", sidecar.DefaultGrace, "on SIGTERM, how long in-flight requests and tunnels may take to finish")
	fs.StringVar(&f.qlogDir, "qlog-dir", "", "write a qlog trace per QUIC connection into this directory (debugging; costly)")
	fs.BoolVar(&f.allowShutdown, "admin-shutdown", false, "allow POST /shutdown on the admin server to start a graceful shutdown")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "bound on reaching a peer for one connection (default 5s)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		return fail(stderr, "proxy: unexpected argument %q", fs.Arg(0))
	}
	cfg, closeAll, err := buildProxyConfig(fs, &f, stderr)
	if err != nil {
		return fail(stderr, "proxy: %v", err)
	}
	defer closeAll()
	log := cfg.sidecar.Logger

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.sidecar.Metrics = telemetry.New(reg)

	// Readiness is reported only once identity is loaded and the inbound
	// listener is bound, i.e. after Start returns.
	sc, err := sidecar.Start(cfg.sidecar)
	if err != nil {
		return fail(stderr, "proxy: %v", err)
	}
	defer sc.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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
			return fail(stderr, "proxy: %v", err)
		}
		defer admin.Close()
		admin.SetReady(true)
	}
	adminAddr := "" // the bound address: --admin 127.0.0.1:0 is useful too
	if admin != nil {
		adminAddr = admin.Addr().String()
	}
	log.Info("ready", "inbound", sc.InboundAddr().String(), "admin", adminAddr)

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
	return 0
}

type proxyConfig struct {
	sidecar  sidecar.Config
	admin    string
	logLevel *slog.LevelVar
}

// buildProxyConfig merges file and flags and constructs the concrete
// identity provider and resolver. Every error is one line naming the
// setting or file at fault.
func buildProxyConfig(fs *flag.FlagSet, f *proxyFlags, logOut io.Writer) (*proxyConfig, func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fc := &fileConfig{}
	if f.config != "" {
		var err error
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
	logger, level, err := newLogger(logOut, pick("log-level", f.logLevel, fc.Log.Level), pick("log-format", f.logFormat, fc.Log.Format))
	if err != nil {
		return nil, nil, err
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
		return nil, nil, err
	}
	closers = append(closers, func() { prov.Close() })
	localID, err := identity.LocalID(prov)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	td := pick("trust-domain", f.trustDomain, fc.Identity.TrustDomain)
	if td == "" {
		td = localID.TrustDomain
	}

	routes := inbound.Routes{}
	for k, v := range fc.Inbound.Routes {
		routes[k] = v
	}
	for k, v := range f.routes.m {
		routes[k] = v
	}
	var binds []sidecar.Bind
	for _, b := range fc.Outbound.Binds {
		binds = append(binds, sidecar.Bind{Listen: b.Listen, Service: b.Service, Opaque: b.Opaque})
	}
	for _, listen := range f.binds.order {
		svc, opt, _ := strings.Cut(f.binds.m[listen], ",")
		if opt != "" && opt != "opaque" {
			return nil, nil, fmt.Errorf("--bind %s=%s: unknown option %q (want opaque)", listen, f.binds.m[listen], opt)
		}
		binds = append(binds, sidecar.Bind{Listen: listen, Service: svc, Opaque: opt == "opaque"})
	}
	for i, b := range binds {
		if b.Listen == "" || b.Service == "" {
			closeAll()
			return nil, nil, fmt.Errorf("outbound bind %d needs both a listen address and a service", i)
		}
	}

	var res discovery.Resolver
	discoFile := pick("discovery-file", f.discoveryFile, fc.Discovery.Static)
	if discoFile != "" {
		sr, err := static.New(discoFile, static.Options{Logger: logger})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		closers = append(closers, func() { sr.Close() })
		res = sr
	} else {
		res = static.NewFromMap(nil)
	}
	// A bind for a service discovery has never heard of is a typo, not
	// something to discover at the first connection.
	services := make([]string, 0, len(binds))
	for _, b := range binds {
		services = append(services, b.Service)
	}
	sort.Strings(services)
	for _, svc := range services {
		w, err := res.Resolve(context.Background(), svc)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("outbound bind for %q: %w", svc, err)
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
	httpProxy := f.httpProxy
	if !set["http-proxy"] && fc.Outbound.HTTPProxy != nil {
		httpProxy = *fc.Outbound.HTTPProxy
	}
	detectTimeout := f.detectTimeout
	if !set["detect-timeout"] && fc.Outbound.DetectTimeout.Duration > 0 {
		detectTimeout = fc.Outbound.DetectTimeout.Duration
	}
	connectTimeout := f.connectTimeout
	if !set["connect-timeout"] && fc.Limits.ConnectTimeout.Duration > 0 {
		connectTimeout = fc.Limits.ConnectTimeout.Duration
	}
	cfg := &proxyConfig{
		sidecar: sidecar.Config{
			Identity:      prov,
			Resolver:      res,
			Authorize:     identity.AuthorizeTrustDomain(td),
			InboundAddr:   pick("inbound", f.inbound, fc.Inbound.Listen),
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
		admin:    pick("admin", f.admin, fc.Admin.Listen),
		logLevel: level,
	}
	return cfg, closeAll, nil
}
