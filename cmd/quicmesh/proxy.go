package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
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
	discoverycp "github.com/quicmesh/quicmesh/discovery/controlplane"
	dnsdisc "github.com/quicmesh/quicmesh/discovery/dns"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	identitycp "github.com/quicmesh/quicmesh/identity/controlplane"
	"github.com/quicmesh/quicmesh/identity/spiffe"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/controlclient"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
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
	dnsZone, dnsServers                    string
	httpProxy                              string
	detectTimeout                          time.Duration
	logLevel, logFormat                    string
	routes, binds                          mapFlag
	connectTimeout, grace                  time.Duration
	allowShutdown                          bool
	qlogDir                                string
	defaultPolicy                          string
	inboundH3                              bool
	// The transparent path (a pod with quicmesh init's rules).
	transparent, plainInbound, plainPolicy, appHost string
	appPorts                                        string
	transport                                       string
	raceDelay                                       time.Duration
	cores                                           int // GOMAXPROCS; see cores.go

	spiffeSocket       string
	federatedBundles   mapFlag
	acceptTrustDomains listFlag
	// spiffeSocketEnv is $SPIFFE_ENDPOINT_SOCKET, read by runProxy so
	// that merging stays a pure function of its inputs.
	spiffeSocketEnv string

	// The control plane: its address, the trust anchors and SPIFFE ID
	// it must present, and the ServiceAccount token that certifies us.
	control, controlCA, controlID, controlToken string
}

const proxyUsage = `Usage: quicmesh proxy --cert FILE --key FILE --bundle FILE [flags]
       quicmesh proxy --spiffe-socket unix:///PATH [flags]
       quicmesh proxy --control HOST:PORT --control-ca FILE [flags]

Runs a sidecar: --route SERVICE=APP_ADDR serves a local app to the mesh,
--bind LISTEN_ADDR=SERVICE gives the local app a listener for a mesh
service, and the HTTP proxy listener (--http-proxy) routes each request by
its URL host. Every flag and config key: docs/operations.md.
`

// newProxyCommand defines quicmesh proxy's flags; parsing args into the
// returned proxyFlags is the caller's.
func newProxyCommand(stdout, stderr io.Writer) (*cli.Command, *proxyFlags) {
	c := cli.New("quicmesh proxy", proxyUsage, stdout, stderr)
	fs := c.Flags
	f := &proxyFlags{
		routes: mapFlag{want: "SERVICE=APP_ADDR"},
		binds:  mapFlag{want: "LISTEN_ADDR=SERVICE[,opaque]"},

		federatedBundles: mapFlag{want: "TRUST_DOMAIN=FILE"},
	}
	fs.StringVar(&f.config, "config", "", "JSON config file (flags override it)")
	fs.StringVar(&f.cert, "cert", "", "workload certificate (PEM, SPIFFE ID in the URI SAN)")
	fs.StringVar(&f.key, "key", "", "workload private key (PEM)")
	fs.StringVar(&f.bundle, "bundle", "", "trust bundle: CA certificates (PEM)")
	fs.Var(&f.federatedBundles, "federated-bundle", "TRUST_DOMAIN=FILE: trust bundle (PEM) of a federated trust domain (repeatable; with --cert/--key/--bundle)")
	fs.StringVar(&f.spiffeSocket, "spiffe-socket", "", "SPIFFE Workload API address (unix:///PATH) for the SVID and bundles, instead of --cert/--key/--bundle (default: $"+spiffe.SocketEnv+" when no identity is configured)")
	fs.StringVar(&f.control, "control", "", "control plane (quicmesh-control) HOST:PORT: the certificate and the discovery come from it, instead of --cert/--key/--bundle, --spiffe-socket, --discovery-file and --discovery-dns-zone")
	fs.StringVar(&f.controlCA, "control-ca", "", "with --control: CA certificates (PEM) the control plane's certificate must chain to, e.g. the mesh CA's ca.crt (required)")
	fs.StringVar(&f.controlID, "control-id", "", "with --control: the control plane's SPIFFE ID (default spiffe://TRUST_DOMAIN/ns/quicmesh/sa/quicmesh-control, the trust domain of --control-ca's certificate)")
	fs.StringVar(&f.controlToken, "control-token", identitycp.DefaultTokenFile, "with --control: the projected ServiceAccount token (audience quicmesh-control), re-read at each certification")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "accept peers from this trust domain (default: our own)")
	fs.Var(&f.acceptTrustDomains, "accept-trust-domain", "also accept peers from this federated trust domain (repeatable; its bundle must be federated)")
	fs.StringVar(&f.inbound, "inbound", defaultInbound, "UDP address for mesh traffic (inbound and outbound QUIC)")
	fs.StringVar(&f.admin, "admin", defaultAdmin, "admin HTTP address (/live, /ready, /metrics, /debug/pprof/, /log-level, /shutdown); empty disables")
	fs.StringVar(&f.discoveryFile, "discovery-file", "", "static discovery file (JSON), reloaded on change")
	fs.StringVar(&f.dnsZone, "discovery-dns-zone", "", "discover service S through DNS: SRV and TXT records at _quicmesh._udp.S.ZONE")
	fs.StringVar(&f.dnsServers, "discovery-dns-server", "", "nameservers for --discovery-dns-zone, IP[:PORT] comma-separated (default: /etc/resolv.conf's)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.Var(&f.routes, "route", "SERVICE=APP_ADDR served by this sidecar's app (repeatable)")
	fs.Var(&f.binds, "bind", "LISTEN_ADDR=SERVICE[,opaque] outbound listener for a service (repeatable); opaque skips protocol detection")
	fs.StringVar(&f.httpProxy, "http-proxy", defaultHTTP, "outbound HTTP proxy listener (absolute-form URIs and CONNECT; the URL host is the service name); empty disables. Two sidecars on one host need different ports")
	fs.DurationVar(&f.detectTimeout, "detect-timeout", time.Second, "how long to wait for an app's first bytes before treating it as opaque TCP")
	fs.DurationVar(&f.grace, "grace", sidecar.DefaultGrace, "on SIGTERM, how long in-flight requests and tunnels may take to finish")
	fs.StringVar(&f.transport, "transport", "auto", "mesh transport: auto (QUIC, falling back per peer to HTTP/2 over TLS over TCP when QUIC is blocked; serves both on the --inbound port number), quic (QUIC only) or tcp (HTTP/2 over TCP only)")
	fs.DurationVar(&f.raceDelay, "race-delay", 0, "with --transport auto: QUIC's head start over TCP on first contact with a peer (default 250ms)")
	fs.StringVar(&f.qlogDir, "qlog-dir", "", "write a qlog trace per QUIC connection into this directory (debugging; costly)")
	fs.BoolVar(&f.inboundH3, "inbound-h3", false, "the --inbound QUIC port also accepts plain HTTP/3 clients (ALPN h3) that present a mesh certificate, routed by :authority under the same authorization policy; needs QUIC (not --transport tcp)")
	fs.BoolVar(&f.allowShutdown, "admin-shutdown", false, "allow POST /shutdown on the admin server to start a graceful shutdown")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 0, "bound on reaching a peer for one connection (default 5s)")
	fs.StringVar(&f.defaultPolicy, "default-inbound-policy", "", "who may call a route the config's inbound.authorization does not name: all-authenticated (the default), unauthenticated, deny, spiffe://TD/* or one SPIFFE ID")
	fs.StringVar(&f.transparent, "transparent", "", "transparent outbound listener that quicmesh init redirects the pod's outbound TCP to (e.g. 127.0.0.1:4145); needs --discovery-file or --control; empty disables")
	fs.StringVar(&f.plainInbound, "plain-inbound", "", "listener for plain TCP from outside the mesh that quicmesh init redirects the pod's inbound TCP to (e.g. 0.0.0.0:4146); empty disables")
	fs.StringVar(&f.plainPolicy, "plain-policy", "permissive", "with --plain-inbound: permissive (deliver plain TCP to the app on the port dialled) or strict (refuse it: mesh traffic only)")
	fs.StringVar(&f.appPorts, "app-ports", "", "comma-separated ports of the local app that peers on the transparent path may reach by the port their app dialled (the routes' ports are allowed too)")
	fs.IntVar(&f.cores, "cores", 0, coresUsage(sidecarCores))
	fs.StringVar(&f.appHost, "app-host", "", "IP address the local app is reached at by port (default 127.0.0.1; in a pod its own IP reaches apps that listen only on it)")
	return c, f
}

func runProxy(args []string, stdout, stderr io.Writer) int {
	c, f := newProxyCommand(stdout, stderr)
	if code, ok := c.Parse(args); !ok {
		return code
	}
	fc := &fileConfig{}
	if f.config != "" {
		var err error
		if fc, err = loadConfigFile(f.config); err != nil {
			return c.Fail("%v", err)
		}
	}
	f.spiffeSocketEnv = os.Getenv(spiffe.SocketEnv)
	set := setFlags(c.Flags)
	opts, err := mergeProxyOptions(fc, f, set)
	if err != nil {
		return c.Fail("%v", err)
	}
	cores, err := processCores(f.cores, set["cores"], sidecarCores)
	if err != nil {
		return c.Fail("%v", err)
	}

	// Nothing is logged until everything is validated, bound and running:
	// a sidecar that fails to start prints its one error line and nothing
	// else, in particular no "started".
	logs := newStartupLog(stderr)
	cfg, closeAll, err := openProxy(opts, logs)
	if err != nil {
		return c.Fail("%v", err)
	}
	defer closeAll()
	log := cfg.deps.Logger
	cores.log(log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(cfg.collectors...)
	cfg.deps.Metrics = telemetry.New(reg)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The admin server is bound first, answering /ready with 503, so that
	// a taken admin port fails the start-up before anything is served.
	var admin *adminServer
	if opts.adminAddr != "" {
		admin, err = startAdminWith(opts.adminAddr, adminOptions{
			Registry:      reg,
			LogLevel:      cfg.logLevel,
			AllowShutdown: opts.allowShutdown,
			Shutdown:      stop,
			Logger:        log,
		})
		if err != nil {
			return c.Fail("%v", opts.names.explainStartError(err))
		}
		defer admin.Close()
	}
	adminAddr := "" // the bound address: --admin 127.0.0.1:0 is useful too
	if admin != nil {
		adminAddr = admin.Addr().String()
	}
	// Fail closed: with the Workload API the SVID may take a while, or
	// never come (a workload the agent does not know); the control plane
	// may be away or refuse the token. Until it comes, nothing is bound
	// and /ready says 503.
	select {
	case <-cfg.identityReady:
	default:
		logs.release()
		if opts.control.addr != "" {
			log.Info("waiting for the first certificate from the control plane; not ready until then", "control", opts.control.addr, "admin", adminAddr)
		} else {
			log.Info("waiting for the first X.509-SVID from the SPIFFE Workload API; not ready until then", "socket", opts.spiffeSocket, "admin", adminAddr)
		}
		select {
		case <-cfg.identityReady:
		case <-ctx.Done():
			log.Info("stopped before an identity arrived")
			return cli.ExitOK
		}
	}
	if err := cfg.identityArrived(); err != nil {
		return c.Fail("%v", err)
	}
	log = cfg.deps.Logger
	sc, err := sidecar.Start(cfg.deps, cfg.opts)
	if err != nil {
		return c.Fail("%v", opts.names.explainStartError(err))
	}
	defer sc.Close()
	if f.config != "" {
		w, err := watchAuthorization(f.config, fc, f, set, opts.sidecar.Inbound.Routes, sc, log, configPollInterval)
		if err != nil {
			return c.Fail("%v", err)
		}
		defer w.Close()
	}

	// Readiness is reported only once identity is loaded and every
	// listener is bound, i.e. after Start returns.
	logs.release()
	if admin != nil {
		admin.SetReady(true)
	}
	httpProxyAddr := "" // the bound address, as for the admin server
	if a := sc.HTTPProxyAddr(); a != nil {
		httpProxyAddr = a.String()
	}
	log.Info("ready", "inbound", sc.InboundAddr().String(), "admin", adminAddr, "http_proxy", httpProxyAddr)

	<-ctx.Done()
	stop()
	if admin != nil {
		admin.SetReady(false)
	}
	log.Info("shutting down", "grace", opts.grace.String())
	gctx, cancel := context.WithTimeout(context.Background(), opts.grace)
	defer cancel()
	if err := sc.Shutdown(gctx); err != nil {
		log.Warn("shutdown", "error", err)
	}
	log.Info("stopped")
	return cli.ExitOK
}

// proxyConfig is what openProxy opened and assembled.
type proxyConfig struct {
	// deps are what openProxy opened (and closeAll closes), for the
	// sidecar built with opts.
	deps     sidecar.Deps
	opts     sidecar.Options
	logLevel *slog.LevelVar
	// collectors are the metrics of what was opened (DNS discovery's).
	collectors []prometheus.Collector
	// identityReady is closed once the provider has a certificate: at
	// once for files, at the first SVID for the Workload API. Then
	// identityArrived completes the configuration.
	identityReady <-chan struct{}
	names         settingNames
	named         bool // identityArrived has run
}

// identityArrived names the sidecar's logs after its identity, once the
// provider has one. Calls after the first do nothing.
func (c *proxyConfig) identityArrived() error {
	if c.named {
		return nil
	}
	localID, err := identity.LocalID(c.deps.Identity)
	if err != nil {
		return fmt.Errorf("%s: %w", c.names.cert, err)
	}
	c.deps.Logger = c.deps.Logger.With("id", localID.String())
	c.named = true
	return nil
}

// openProxy opens what the options name — the workload identity files and
// the discovery file — checks what only they can tell (the certificate's
// SPIFFE ID, the services the binds name) and assembles the sidecar's
// configuration. On success the caller must call closeAll once the
// sidecar is done; on error everything opened so far is already closed.
// Every error is one line naming the flag or config key at fault.
func openProxy(o proxyOptions, logOut io.Writer) (_ *proxyConfig, closeAll func(), err error) {
	var opened []io.Closer
	closeOpened := func() {
		for i := len(opened) - 1; i >= 0; i-- {
			opened[i].Close()
		}
	}
	defer func() {
		if err != nil {
			closeOpened()
		}
	}()
	logger, level := newLogger(logOut, o.logLevel, o.logJSON)

	var (
		prov  identity.Provider
		ready <-chan struct{}
		res   discovery.Resolver = static.NewFromMap(nil)
	)
	if o.control.addr != "" {
		cp, err := openControl(o.control, o.names, logger)
		if err != nil {
			return nil, nil, err
		}
		opened = append(opened, cp)
		prov, ready, res = cp.provider, cp.provider.Ready(), cp.resolver
	} else {
		var closer io.Closer
		if prov, ready, closer, err = openIdentity(o, logger); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.names.identity, err)
		}
		opened = append(opened, closer)
	}
	authz := identity.AuthorizeLocalTrustDomain(prov, o.acceptTrustDomains...)
	if o.trustDomain != "" {
		authz = identity.AuthorizeTrustDomains(append([]string{o.trustDomain}, o.acceptTrustDomains...)...)
	}

	var metrics []prometheus.Collector
	switch {
	case o.discoveryFile != "":
		sr, err := static.New(o.discoveryFile, static.Options{Logger: logger})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.names.discovery, err)
		}
		opened = append(opened, sr)
		res = sr
	case o.dns.Zone != "":
		opts := o.dns
		opts.Logger = logger
		dr, err := dnsdisc.New(opts)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.names.discovery, err)
		}
		opened = append(opened, dr)
		res = dr
		metrics = append(metrics, dr)
	}
	if err := checkBindServices(res, o, logger); err != nil {
		return nil, nil, err
	}

	cfg := &proxyConfig{
		deps: sidecar.Deps{
			Identity:  prov,
			Resolver:  res,
			Authorize: authz,
			Logger:    logger,
		},
		opts:          o.sidecar,
		logLevel:      level,
		identityReady: ready,
		names:         o.names,
		collectors:    metrics,
	}
	select {
	case <-ready:
		// A certificate without a usable SPIFFE ID fails now, naming it.
		if err := cfg.identityArrived(); err != nil {
			return nil, nil, err
		}
	default:
	}
	return cfg, closeOpened, nil
}

// openIdentity opens the identity source the options name. ready is
// closed once the provider has a certificate.
func openIdentity(o proxyOptions, logger *slog.Logger) (_ identity.Provider, ready <-chan struct{}, _ io.Closer, _ error) {
	if o.spiffeSocket != "" {
		p, err := spiffe.New(o.spiffeSocket, spiffe.Options{Logger: logger})
		if err != nil {
			return nil, nil, nil, err
		}
		return p, p.Ready(), p, nil
	}
	p, err := identity.NewFileProvider(o.cert, o.key, o.bundle, identity.FileOptions{Logger: logger, FederatedBundles: o.federatedBundles})
	if err != nil {
		return nil, nil, nil, err
	}
	loaded := make(chan struct{})
	close(loaded)
	return p, loaded, p, nil
}

// controlPlane is the control plane's identity provider and resolver
// and the two connections under them: Certify's, which presents no
// client certificate, and Discovery's, which presents the workload
// certificate. A client certificate is sent at the handshake only, so
// Discovery's connection must not be made before the first certificate:
// it is made lazily, at the first Watch, and the sidecar (the only
// caller) starts once certified.
type controlPlane struct {
	provider               *identitycp.Provider
	resolver               *discoverycp.Resolver
	certifyConn, watchConn io.Closer
}

// openControl connects to the control plane and starts certifying. It
// checks what it can before that: the CA file and the token file.
func openControl(o controlOptions, names settingNames, logger *slog.Logger) (*controlPlane, error) {
	anchors, td, err := loadAnchors(o.ca)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", names.controlCA, err)
	}
	id := o.id
	if id.IsZero() {
		if td == "" {
			return nil, fmt.Errorf("%s: %s has no SPIFFE trust domain URI to derive the control plane's ID from: set --control-id (or control.id)", names.controlCA, o.ca)
		}
		id = identity.ID{TrustDomain: td, Path: controlPlanePath}
	}
	// A token that is not there at start is a mistake in the pod spec,
	// not something to wait for: the kubelet mounts it before starting
	// the container.
	if _, err := os.Stat(o.tokenFile); err != nil {
		return nil, fmt.Errorf("%s: %w", names.controlToken, err)
	}
	certifyConn, err := controlclient.Dial(o.addr, anchors, id, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", names.identity, err)
	}
	prov, err := identitycp.Start(controlpb.NewIdentityClient(certifyConn), identitycp.Options{TokenFile: o.tokenFile, Logger: logger})
	if err != nil {
		certifyConn.Close()
		return nil, fmt.Errorf("%s: %w", names.identity, err)
	}
	watchConn, err := controlclient.Dial(o.addr, anchors, id, prov.Certificate)
	if err != nil {
		prov.Close()
		certifyConn.Close()
		return nil, fmt.Errorf("%s: %w", names.identity, err)
	}
	logger.Info("certifying with the control plane", "control", o.addr, "control_id", id.String(), "token", o.tokenFile)
	return &controlPlane{provider: prov, resolver: discoverycp.New(controlpb.NewDiscoveryClient(watchConn)),
		certifyConn: certifyConn, watchConn: watchConn}, nil
}

// controlPlanePath is the default control plane's SPIFFE ID path, as
// quicmesh-control's --id default.
const controlPlanePath = "/ns/quicmesh/sa/quicmesh-control"

// Close stops renewing and closes both connections.
func (c *controlPlane) Close() error {
	c.watchConn.Close()
	c.provider.Close()
	return c.certifyConn.Close()
}

// loadAnchors reads PEM CA certificates and returns them with the trust
// domain of the first one's SPIFFE URI SAN ("" if it has none).
func loadAnchors(path string) (*x509.CertPool, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	n, td := 0, ""
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		pool.AddCert(c)
		if n++; td == "" && len(c.URIs) == 1 {
			if id, err := identity.ParseID(c.URIs[0].String()); err == nil && id.Path == "" {
				td = id.TrustDomain
			}
		}
	}
	if n == 0 {
		return nil, "", fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, td, nil
}

// checkBindServices fails for a bind naming a service discovery has never
// heard of: that is a typo, not something to discover at the first
// connection. DNS that cannot answer now is not a reason to refuse to
// start: the bind's connections wait for it like any later outage.
func checkBindServices(res discovery.Resolver, o proxyOptions, logger *slog.Logger) error {
	if o.control.addr != "" {
		// The control plane answers only certified sidecars, and a
		// Service may be created after the pods that call it: a bind's
		// connections fail until its service exists.
		return nil
	}
	for i, b := range o.sidecar.Listeners.Binds {
		ctx, cancel := context.WithTimeout(context.Background(), 2*max(o.dns.Timeout, time.Second))
		w, err := res.Resolve(ctx, b.Service)
		cancel()
		switch {
		case errors.Is(err, discovery.ErrUnknownService) && o.dns.Zone != "":
			return fmt.Errorf("%s: %w", o.names.binds[i], err)
		case err != nil && o.dns.Zone != "":
			logger.Warn("DNS discovery cannot check a bind's service now", "bind", o.names.binds[i], "err", err)
			continue
		case errors.Is(err, discovery.ErrUnknownService) && o.discoveryFile == "":
			return fmt.Errorf("%s: service %q is unknown: there is no discovery file (--discovery-file)", o.names.binds[i], b.Service)
		case errors.Is(err, discovery.ErrUnknownService):
			return fmt.Errorf("%s: service %q is not in the discovery file %s", o.names.binds[i], b.Service, o.discoveryFile)
		case err != nil:
			return fmt.Errorf("%s: %w", o.names.binds[i], err)
		}
		w.Close()
	}
	return nil
}

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
