package main

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	dnsdisc "github.com/quicmesh/quicmesh/discovery/dns"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/spiffe"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// proxyOptions is a sidecar's whole configuration after merging the
// config file, the flags and the defaults, every value validated. Making
// one opens nothing (no file, socket or goroutine); openProxy turns it
// into the running dependencies. What can only be checked against opened
// things — the certificate's files and identity, the discovery file, the
// services the binds name — is checked there.
type proxyOptions struct {
	logLevel slog.Level
	logJSON  bool

	// The identity comes either from files (cert, key, bundle and the
	// federated bundles) or from the SPIFFE Workload API (spiffeSocket
	// set); never both.
	cert, key, bundle string
	federatedBundles  map[string]string // trust domain -> PEM file
	spiffeSocket      string
	// trustDomain is the trust domain whose peers are accepted; empty
	// means the workload certificate's own. acceptTrustDomains are
	// accepted too (federated trust domains).
	trustDomain        string
	acceptTrustDomains []string
	discoveryFile      string // empty: no discovery file
	// control, when its addr is set, is both the identity and the
	// discovery; then no other identity source or discovery is set.
	control controlOptions
	// dns is DNS discovery, validated, defaults filled in except the
	// nameservers; a zero Zone means it is not used.
	dns dnsdisc.Options

	adminAddr string // empty: no admin server
	// sidecar is what the sidecar is to build: its listeners, routes,
	// limits and tunables. openProxy adds what it opens (sidecar.Deps).
	sidecar sidecar.Options

	grace         time.Duration
	allowShutdown bool

	names settingNames
}

// controlOptions locate the control plane, say how to trust it and how
// to prove who we are to it.
type controlOptions struct {
	addr string // HOST:PORT; empty: no control plane
	ca   string // PEM trust anchors the control plane's certificate must chain to
	// id is the control plane's SPIFFE ID; zero: the default ID in the
	// trust domain of ca's certificate, which only openProxy can read.
	id        identity.ID
	tokenFile string
}

// settingNames records how the operator spelled each setting (a flag or a
// config key), so an error found after merging names it the same way.
type settingNames struct {
	identity     string // the certificate, key and bundle together, or the Workload API socket
	cert         string
	discovery    string
	controlCA    string
	controlToken string
	binds        []string // parallel to proxyOptions.binds
	// listeners are the listening addresses, for bind failures at start-up.
	listeners []listenSetting
}

// listenSetting is a listening address and how an error names it, e.g.
// "--http-proxy 127.0.0.1:4140" or "--bind 127.0.0.1:7001=echo".
type listenSetting struct{ setting, addr string }

// merger merges one setting at a time: a flag given on the command line
// wins over the config file, which wins over the flag's default.
type merger struct {
	fc  *fileConfig
	f   *proxyFlags
	set map[string]bool // flags given on the command line
}

// pick returns the flag's value if it was given or the file has none,
// else the file's.
func (m merger) pick(flagName, flagVal, fileVal string) string {
	if m.set[flagName] || fileVal == "" {
		return flagVal
	}
	return fileVal
}

// name is how an error refers to a setting: the flag, unless the value
// came from the config file.
func (m merger) name(flagName, key string, fromFile bool) string {
	if m.set[flagName] || !fromFile {
		return "--" + flagName
	}
	return fmt.Sprintf("config %q", key)
}

// duration is the flag's value if it was given or the file has none (0),
// else the file's.
func (m merger) duration(flagName string, flagVal, fileVal time.Duration) time.Duration {
	if m.set[flagName] || fileVal <= 0 {
		return flagVal
	}
	return fileVal
}

// mergeProxyOptions merges the config file fc (empty if there is none),
// the parsed flags f and their defaults into one validated proxyOptions.
// set holds the flags given on the command line. Every error is one line
// naming the flag or config key at fault. It opens nothing.
func mergeProxyOptions(fc *fileConfig, f *proxyFlags, set map[string]bool) (proxyOptions, error) {
	m := merger{fc: fc, f: f, set: set}
	var o proxyOptions
	var err error
	if o.logLevel, o.logJSON, err = m.log(); err != nil {
		return proxyOptions{}, err
	}
	if err := m.control(&o); err != nil {
		return proxyOptions{}, err
	}
	if err := m.identity(&o); err != nil {
		return proxyOptions{}, err
	}
	if o.sidecar.Inbound.Routes, err = m.routes(); err != nil {
		return proxyOptions{}, err
	}
	if o.sidecar.Inbound.Authorization, err = authorization(fc, f, set, o.sidecar.Inbound.Routes); err != nil {
		return proxyOptions{}, err
	}
	if o.sidecar.Listeners.Binds, o.names.binds, err = m.binds(); err != nil {
		return proxyOptions{}, err
	}
	if err := m.listeners(&o); err != nil {
		return proxyOptions{}, err
	}
	if err := m.limits(&o); err != nil {
		return proxyOptions{}, err
	}
	if err := m.discovery(&o); err != nil {
		return proxyOptions{}, err
	}
	if o.sidecar.Outbound.Resilience, err = m.resilience(); err != nil {
		return proxyOptions{}, err
	}
	o.sidecar.QlogDir = m.pick("qlog-dir", f.qlogDir, fc.Debug.QlogDir)
	if err := m.transparent(&o); err != nil {
		return proxyOptions{}, err
	}
	if err := m.transport(&o); err != nil {
		return proxyOptions{}, err
	}
	if err := m.inboundH3(&o); err != nil {
		return proxyOptions{}, err
	}
	o.allowShutdown = f.allowShutdown
	return o, nil
}

// transport picks the mesh transport policy and its tuning.
func (m merger) transport(o *proxyOptions) error {
	t := &m.fc.Transport
	mode, err := fallback.ParseMode(m.pick("transport", m.f.transport, t.Mode))
	if err != nil {
		return fmt.Errorf("%s: %w", m.name("transport", "transport.mode", t.Mode != ""), err)
	}
	o.sidecar.Transport = mode
	o.sidecar.Fallback = sidecar.Fallback{
		RaceDelay:  m.duration("race-delay", m.f.raceDelay, t.RaceDelay.Duration),
		ReprobeMin: t.ReprobeMin.Duration,
		ReprobeMax: t.ReprobeMax.Duration,
	}
	if f := o.sidecar.Fallback; f.ReprobeMax > 0 && f.ReprobeMax < f.ReprobeMin {
		return fmt.Errorf(`config "transport.reprobe_max" (%v) is below "transport.reprobe_min" (%v)`, f.ReprobeMax, f.ReprobeMin)
	}
	return nil
}

// discovery picks the discovery: a static file, DNS, or none (then no
// bind can resolve).
func (m merger) discovery(o *proxyOptions) error {
	if o.control.addr != "" {
		return nil // control checked that no other discovery is named
	}
	d := &m.fc.Discovery.DNS
	o.discoveryFile = m.pick("discovery-file", m.f.discoveryFile, m.fc.Discovery.Static)
	o.names.discovery = m.name("discovery-file", "discovery.static", m.fc.Discovery.Static != "")
	zone := m.pick("discovery-dns-zone", m.f.dnsZone, d.Zone)
	servers := d.Servers
	serversName := m.name("discovery-dns-server", "discovery.dns.servers", d.Servers != nil)
	if m.set["discovery-dns-server"] {
		servers = strings.Split(m.f.dnsServers, ",")
	}
	if zone == "" {
		if len(servers) > 0 {
			return fmt.Errorf("%s: nameservers without a zone: set --discovery-dns-zone (or discovery.dns.zone)", serversName)
		}
		return nil
	}
	zoneName := m.name("discovery-dns-zone", "discovery.dns.zone", d.Zone != "")
	if o.discoveryFile != "" {
		return fmt.Errorf("%s and %s: choose one discovery, a static file or DNS", o.names.discovery, zoneName)
	}
	o.names.discovery = zoneName
	// Validate piece by piece, so that an error names its setting.
	o.dns = dnsdisc.Options{Zone: zone}
	if err := o.dns.Validate(); err != nil {
		return fmt.Errorf("%s: %w", zoneName, err)
	}
	o.dns = dnsdisc.Options{Zone: zone, Nameservers: slices.Clone(servers)}
	if err := o.dns.Validate(); err != nil {
		return fmt.Errorf("%s: %w", serversName, err)
	}
	o.dns = dnsdisc.Options{Zone: zone, Nameservers: o.dns.Nameservers, MinTTL: d.MinTTL.Duration, MaxTTL: d.MaxTTL.Duration, Timeout: d.Timeout.Duration}
	if err := o.dns.Validate(); err != nil {
		return fmt.Errorf(`config "discovery.dns": %w`, err)
	}
	return nil
}

// control picks the control plane. It is the identity and the discovery
// at once, so naming it with another identity source or discovery, in
// the flags or the file, is an error naming both; settings of a control
// plane that is not used are too. SPIFFE_ENDPOINT_SOCKET, a default for
// when no identity is configured, is ignored.
func (m merger) control(o *proxyOptions) error {
	c := &m.fc.Control
	addr := m.pick("control", m.f.control, c.Address)
	addrName := m.name("control", "control.address", c.Address != "")
	caName := m.name("control-ca", "control.ca", c.CA != "")
	idName := m.name("control-id", "control.id", c.ID != "")
	tokenName := m.name("control-token", "control.token_file", c.TokenFile != "")
	ca, id := m.pick("control-ca", m.f.controlCA, c.CA), m.pick("control-id", m.f.controlID, c.ID)
	if addr == "" {
		for _, s := range []struct {
			given bool
			name  string
		}{{ca != "", caName}, {id != "", idName}, {m.set["control-token"] || c.TokenFile != "", tokenName}} {
			if s.given {
				return fmt.Errorf("%s: only with --control (or control.address)", s.name)
			}
		}
		return nil
	}
	fi, fd := &m.fc.Identity, &m.fc.Discovery
	type setting struct {
		given bool
		name  string
	}
	for _, s := range []setting{
		{m.set["cert"], "--cert"}, {m.set["key"], "--key"}, {m.set["bundle"], "--bundle"},
		{m.set["federated-bundle"], "--federated-bundle"}, {m.set["spiffe-socket"], "--spiffe-socket"},
		{fi.Cert != "", `config "identity.cert"`}, {fi.Key != "", `config "identity.key"`}, {fi.Bundle != "", `config "identity.bundle"`},
		{len(fi.FederatedBundles) > 0, `config "identity.federated_bundles"`}, {fi.SpiffeSocket != "", `config "identity.spiffe_socket"`},
	} {
		if s.given {
			return fmt.Errorf("%s and %s name two identity sources: use one", addrName, s.name)
		}
	}
	for _, s := range []setting{
		{m.set["discovery-file"], "--discovery-file"}, {m.set["discovery-dns-zone"], "--discovery-dns-zone"},
		{m.set["discovery-dns-server"], "--discovery-dns-server"},
		{fd.Static != "", `config "discovery.static"`}, {fd.DNS.Zone != "", `config "discovery.dns.zone"`},
		{fd.DNS.Servers != nil, `config "discovery.dns.servers"`},
	} {
		if s.given {
			return fmt.Errorf("%s and %s name two discoveries: use one", addrName, s.name)
		}
	}
	if m.set["accept-trust-domain"] || len(fi.AcceptTrustDomains) > 0 {
		name := m.name("accept-trust-domain", "identity.accept_trust_domains", len(fi.AcceptTrustDomains) > 0)
		return fmt.Errorf("%s with %s: the control plane sends no federated trust bundles, so only its own trust domain can be verified", name, addrName)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %s: not a HOST:PORT address", addrName, addr)
	}
	if ca == "" {
		return fmt.Errorf("%s: no CA to verify the control plane with: set --control-ca (or control.ca), e.g. the mesh CA's ca.crt", addrName)
	}
	o.control = controlOptions{addr: addr, ca: ca, tokenFile: m.pick("control-token", m.f.controlToken, c.TokenFile)}
	if o.control.tokenFile == "" {
		return fmt.Errorf("%s: empty: certification needs the ServiceAccount token file", tokenName)
	}
	if id != "" {
		var err error
		if o.control.id, err = identity.ParseID(id); err != nil {
			return fmt.Errorf("%s: %w", idName, err)
		}
	}
	o.names.identity, o.names.cert, o.names.discovery = addrName, addrName, addrName
	o.names.controlCA, o.names.controlToken = caName, tokenName
	return nil
}

func (m merger) log() (level slog.Level, json bool, err error) {
	levelName := m.pick("log-level", m.f.logLevel, m.fc.Log.Level)
	if levelName != "" {
		if err := level.UnmarshalText([]byte(levelName)); err != nil {
			return 0, false, fmt.Errorf("%s: unknown log level %q: want debug, info, warn or error",
				m.name("log-level", "log.level", m.fc.Log.Level != ""), levelName)
		}
	}
	switch format := m.pick("log-format", m.f.logFormat, m.fc.Log.Format); format {
	case "", "text":
		return level, false, nil
	case "json":
		return level, true, nil
	default:
		return 0, false, fmt.Errorf("%s: unknown log format %q: want text or json",
			m.name("log-format", "log.format", m.fc.Log.Format != ""), format)
	}
}

// identity picks the identity source. The command line wins over the
// config file, which wins over the SPIFFE_ENDPOINT_SOCKET environment
// variable: the first of them that names a source (--spiffe-socket, or
// any of --cert, --key, --bundle, --federated-bundle; then the same keys
// in the file's "identity") decides, and naming both sources in one of
// them is an error. The environment is used only when neither names one.
// The files' settings themselves still merge setting by setting.
func (m merger) identity(o *proxyOptions) error {
	if o.control.addr != "" {
		return m.trustDomains(o) // control checked that no other source is named
	}
	id := &m.fc.Identity
	flagFiles := m.set["cert"] || m.set["key"] || m.set["bundle"] || m.set["federated-bundle"]
	fileFiles := id.Cert != "" || id.Key != "" || id.Bundle != "" || len(id.FederatedBundles) > 0
	switch {
	case m.set["spiffe-socket"] && flagFiles:
		return errors.New("--spiffe-socket and --cert/--key/--bundle/--federated-bundle name two identity sources: use one")
	case m.set["spiffe-socket"]:
		o.spiffeSocket, o.names.identity = m.f.spiffeSocket, "--spiffe-socket"
	case flagFiles:
	case id.SpiffeSocket != "" && fileFiles:
		return errors.New(`config "identity.spiffe_socket" and "identity.cert"/"key"/"bundle"/"federated_bundles" name two identity sources: use one`)
	case id.SpiffeSocket != "":
		o.spiffeSocket, o.names.identity = id.SpiffeSocket, `config "identity.spiffe_socket"`
	case !fileFiles && m.f.spiffeSocketEnv != "":
		o.spiffeSocket, o.names.identity = m.f.spiffeSocketEnv, spiffe.SocketEnv
	}
	if err := m.trustDomains(o); err != nil {
		return err
	}
	if o.spiffeSocket != "" {
		if err := spiffe.CheckAddress(o.spiffeSocket); err != nil {
			return fmt.Errorf("%s: %w", o.names.identity, err)
		}
		o.names.cert = o.names.identity
		return nil
	}

	o.cert, o.key, o.bundle = m.pick("cert", m.f.cert, id.Cert), m.pick("key", m.f.key, id.Key), m.pick("bundle", m.f.bundle, id.Bundle)
	switch {
	case o.cert == "" && o.key == "" && o.bundle == "":
		return errors.New("no workload identity: set --cert, --key and --bundle (or identity.cert, .key, .bundle), or --spiffe-socket (identity.spiffe_socket, " + spiffe.SocketEnv + "); quicmesh never runs without mTLS")
	case o.cert == "":
		return errors.New("no workload certificate: set --cert (or identity.cert); quicmesh never runs without mTLS")
	case o.key == "":
		return errors.New("no private key: set --key (or identity.key)")
	case o.bundle == "":
		return errors.New("no trust bundle: set --bundle (or identity.bundle)")
	}
	fedName := `config "identity.federated_bundles"`
	if m.set["federated-bundle"] {
		o.federatedBundles, fedName = m.f.federatedBundles.m, "--federated-bundle"
	} else if len(id.FederatedBundles) > 0 {
		o.federatedBundles = id.FederatedBundles
	}
	for _, td := range slices.Sorted(maps.Keys(o.federatedBundles)) {
		if err := identity.CheckTrustDomain(td); err != nil {
			return fmt.Errorf("%s %s=%s: %w", fedName, td, o.federatedBundles[td], err)
		}
	}
	o.names.cert = m.name("cert", "identity.cert", id.Cert != "")
	o.names.identity = strings.Join([]string{o.names.cert,
		m.name("key", "identity.key", id.Key != ""), m.name("bundle", "identity.bundle", id.Bundle != "")}, ", ")
	if o.federatedBundles != nil {
		o.names.identity += ", " + fedName
	}
	return nil
}

// trustDomains picks the trust domains whose peers are accepted: a flag
// replaces the file's value.
func (m merger) trustDomains(o *proxyOptions) error {
	id := &m.fc.Identity
	o.trustDomain = m.pick("trust-domain", m.f.trustDomain, id.TrustDomain)
	if o.trustDomain != "" {
		if err := identity.CheckTrustDomain(o.trustDomain); err != nil {
			return fmt.Errorf("%s: %w", m.name("trust-domain", "identity.trust_domain", id.TrustDomain != ""), err)
		}
	}
	name := "--accept-trust-domain"
	o.acceptTrustDomains = slices.Clone(m.f.acceptTrustDomains)
	if !m.set["accept-trust-domain"] && len(id.AcceptTrustDomains) > 0 {
		o.acceptTrustDomains, name = slices.Clone(id.AcceptTrustDomains), `config "identity.accept_trust_domains"`
	}
	for _, td := range o.acceptTrustDomains {
		if err := identity.CheckTrustDomain(td); err != nil {
			return fmt.Errorf("%s %s: %w", name, td, err)
		}
	}
	return nil
}

// routes are the file's routes, then the flags' (a flag overrides the
// file's route for the same service).
func (m merger) routes() (inbound.Routes, error) {
	routes := inbound.Routes{}
	for svc, addr := range m.fc.Inbound.Routes {
		if _, _, err := inbound.ParseAppAddr(addr); err != nil {
			return nil, fmt.Errorf("config %q: %w", "inbound.routes."+svc, err)
		}
		routes[svc] = addr
	}
	for _, svc := range m.f.routes.order {
		addr := m.f.routes.m[svc]
		if _, _, err := inbound.ParseAppAddr(addr); err != nil {
			return nil, fmt.Errorf("--route %s=%s: %w", svc, addr, err)
		}
		routes[svc] = addr
	}
	return routes, nil
}

// authorization is the inbound authorization policy: the file's
// inbound.authorization, its default replaced by --default-inbound-policy
// if given, checked against routes (a rule for a route that is not
// served is a typo that would leave the meant route on the default).
// The config watcher calls it again on every change of the file, with
// the same flags and the routes the sidecar started with.
func authorization(fc *fileConfig, f *proxyFlags, set map[string]bool, routes inbound.Routes) (*authz.Policy, error) {
	var spec authz.Spec
	if fc.Inbound.Authorization != nil {
		spec = *fc.Inbound.Authorization
	}
	if set["default-inbound-policy"] {
		spec.Default = f.defaultPolicy
		if _, err := authz.Parse(authz.Spec{Default: spec.Default}); err != nil {
			return nil, fmt.Errorf("--default-inbound-policy %s: %w", f.defaultPolicy, err)
		}
	}
	p, err := authz.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf(`config "inbound.authorization": %w`, err)
	}
	for _, name := range p.Routes() {
		if _, ok := routes[name]; !ok {
			key := "routes"
			if _, ok := spec.Routes[name]; !ok {
				key = "http_routes"
			}
			return nil, fmt.Errorf(`config "inbound.authorization.%s.%s": no such inbound route (inbound.routes, --route)`, key, name)
		}
	}
	return p, nil
}

// binds are the file's binds, then the flags'; names[i] is how bind i was
// written.
func (m merger) binds() (binds []sidecar.Bind, names []string, err error) {
	for i, b := range m.fc.Outbound.Binds {
		setting := fmt.Sprintf("config %q", fmt.Sprintf("outbound.binds[%d]", i))
		if b.Listen == "" || b.Service == "" {
			return nil, nil, fmt.Errorf("%s: needs both \"listen\" and \"service\"", setting)
		}
		binds = append(binds, sidecar.Bind{Listen: b.Listen, Service: b.Service, Opaque: b.Opaque})
		names = append(names, setting)
	}
	for _, listen := range m.f.binds.order {
		svc, opt, _ := strings.Cut(m.f.binds.m[listen], ",")
		setting := "--bind " + listen + "=" + m.f.binds.m[listen]
		if svc == "" {
			return nil, nil, fmt.Errorf("%s: no service name (want LISTEN_ADDR=SERVICE[,opaque])", setting)
		}
		if opt != "" && opt != "opaque" {
			return nil, nil, fmt.Errorf("%s: unknown option %q (want opaque)", setting, opt)
		}
		binds = append(binds, sidecar.Bind{Listen: listen, Service: svc, Opaque: opt == "opaque"})
		names = append(names, setting)
	}
	return binds, names, nil
}

// listeners picks the listening addresses and checks that each is a
// HOST:PORT; the admin server and the HTTP proxy may be disabled ("").
func (m merger) listeners(o *proxyOptions) error {
	inboundAddr := m.pick("inbound", m.f.inbound, m.fc.Inbound.Listen)
	o.sidecar.InboundAddr = inboundAddr
	o.adminAddr = m.pick("admin", m.f.admin, m.fc.Admin.Listen)
	httpProxyAddr := m.f.httpProxy
	if !m.set["http-proxy"] && m.fc.Outbound.HTTPProxy != nil {
		httpProxyAddr = *m.fc.Outbound.HTTPProxy // "" in the file disables it
	}
	o.sidecar.Listeners.HTTPProxy = httpProxyAddr
	inboundName := m.name("inbound", "inbound.listen", m.fc.Inbound.Listen != "")
	adminName := m.name("admin", "admin.listen", m.fc.Admin.Listen != "")
	httpProxyName := m.name("http-proxy", "outbound.http_proxy", m.fc.Outbound.HTTPProxy != nil)
	o.names.listeners = []listenSetting{
		{inboundName + " " + inboundAddr, inboundAddr},
		{adminName + " " + o.adminAddr, o.adminAddr},
		{httpProxyName + " " + httpProxyAddr, httpProxyAddr},
	}
	for i, b := range o.sidecar.Listeners.Binds {
		o.names.listeners = append(o.names.listeners, listenSetting{o.names.binds[i], b.Listen})
	}
	for i, l := range o.names.listeners {
		if l.addr == "" && (i == 1 || i == 2) {
			continue // the admin server or HTTP proxy, disabled
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return fmt.Errorf("%s: not a HOST:PORT address", l.setting)
		}
	}
	return nil
}

// limits gathers the timeouts and resource bounds. The config file's
// durations were checked (non-negative) when it was parsed; the flags'
// are checked here.
func (m merger) limits(o *proxyOptions) error {
	lim := &m.fc.Limits
	detectTimeout := m.duration("detect-timeout", m.f.detectTimeout, m.fc.Outbound.DetectTimeout.Duration)
	connectTimeout := m.duration("connect-timeout", m.f.connectTimeout, lim.ConnectTimeout.Duration)
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"detect-timeout", detectTimeout}, {"connect-timeout", connectTimeout}, {"grace", m.f.grace}} {
		if d.v < 0 {
			return fmt.Errorf("--%s %s: must not be negative", d.flag, d.v)
		}
	}
	o.grace = m.f.grace
	if err := checkDialTimeout(lim.DialTimeout, lim.HandshakeTimeout.Duration); err != nil {
		return err
	}
	liveness := lim.LivenessTimeout.Duration
	if liveness == 0 && lim.LivenessTimeout.set() {
		liveness = -1 // "0s" turns the liveness watch off
	}
	o.sidecar.Limits = transport.Limits{
		MaxIncomingStreams:      lim.MaxStreamsPerPeer,
		StreamReceiveWindow:     lim.StreamWindowBytes,
		ConnectionReceiveWindow: lim.ConnWindowBytes,
		DialTimeout:             lim.DialTimeout.Duration,
		HandshakeTimeout:        lim.HandshakeTimeout.Duration,
		IdleTimeout:             lim.IdleTimeout.Duration,
		KeepAlive:               lim.KeepAlive.Duration,
		LivenessTimeout:         liveness,
		MaxHandshakes:           lim.MaxHandshakes,
		RetryThreshold:          lim.RetryThreshold,
	}
	o.sidecar.Outbound = outbound.Options{
		ConnectTimeout: connectTimeout,
		Detect:         detect.Config{Timeout: detectTimeout},
		MaxInFlight:    m.fc.Outbound.MaxInFlight,
		HeaderTimeout:  lim.HeaderTimeout.Duration,
		IdleTimeout:    lim.AppIdleTimeout.Duration,
		MaxHeaderBytes: lim.MaxHeaderBytes,
	}
	// The routes are set already: only the tunables here.
	o.sidecar.Inbound.ConnectTimeout = lim.AppConnectTimeout.Duration
	o.sidecar.Inbound.HeaderTimeout = lim.HeaderTimeout.Duration
	o.sidecar.Inbound.MaxInFlight = lim.InboundMaxInFlight
	return nil
}

// checkDialTimeout rejects a limits.dial_timeout the transport would not
// honour as written: "0s" (the transport would take it for the default,
// which the operator did not ask for) and one above the handshake
// timeout (which bounds the whole dial, so the transport would silently
// lower it).
func checkDialTimeout(dial duration, handshake time.Duration) error {
	if !dial.set() {
		return nil
	}
	if dial.Duration == 0 {
		return fmt.Errorf(`config "limits.dial_timeout": must be positive (omit it for the default, %v)`, transport.DefaultDialTimeout)
	}
	if handshake == 0 {
		handshake = transport.DefaultHandshakeTimeout
	}
	if dial.Duration > handshake {
		return fmt.Errorf(`config "limits.dial_timeout" %v: longer than "limits.handshake_timeout" (%v), which bounds the whole dial`, dial.Duration, handshake)
	}
	return nil
}

// transparent gathers the transparent path's settings (a flag beats its
// config key): its two listeners, the plain TCP policy, and the app's
// ports and address.
func (m merger) transparent(o *proxyOptions) error {
	f, in := m.f, &m.fc.Inbound
	l := &o.sidecar.Listeners
	for _, s := range []struct {
		flag, key, flagVal, fileVal string
		dst                         *string
	}{
		{"transparent", "outbound.transparent", f.transparent, m.fc.Outbound.Transparent, &l.Transparent},
		{"plain-inbound", "inbound.plain_listen", f.plainInbound, in.PlainListen, &l.PlainInbound},
	} {
		addr := m.pick(s.flag, s.flagVal, s.fileVal)
		if addr == "" {
			continue
		}
		name := m.name(s.flag, s.key, s.fileVal != "")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %s: not a HOST:PORT address", name, addr)
		}
		*s.dst = addr
		o.names.listeners = append(o.names.listeners, listenSetting{name + " " + addr, addr})
	}
	policy, err := inbound.ParsePlainPolicy(m.pick("plain-policy", f.plainPolicy, in.PlainPolicy))
	if err != nil {
		return fmt.Errorf("%s: %w", m.name("plain-policy", "inbound.plain_policy", in.PlainPolicy != ""), err)
	}
	if l.PlainInbound != "" {
		l.PlainPolicy = policy // meaningless without the listener
	}
	if host := m.pick("app-host", f.appHost, in.AppHost); host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%s %s: not an IP address", m.name("app-host", "inbound.app_host", in.AppHost != ""), host)
		}
		o.sidecar.Inbound.AppHost = host
	}
	switch {
	case m.set["app-ports"] || len(in.AppPorts) == 0:
		if f.appPorts == "" {
			break
		}
		for _, p := range strings.Split(f.appPorts, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("--app-ports %s: %q is not a port", f.appPorts, p)
			}
			o.sidecar.Inbound.AppPorts = append(o.sidecar.Inbound.AppPorts, uint16(n))
		}
	default:
		for _, n := range in.AppPorts {
			if n <= 0 || n > 65535 {
				return fmt.Errorf(`config "inbound.app_ports": %d is not a port`, n)
			}
			o.sidecar.Inbound.AppPorts = append(o.sidecar.Inbound.AppPorts, uint16(n))
		}
	}
	return nil
}

// resilience is the config file's outbound failure policy, each policy
// validated under its key.
func (m merger) resilience() (outbound.Resilience, error) {
	rc := &m.fc.Resilience
	fa := rc.FailureAccrual
	if fa.ConsecutiveFailures < 0 {
		return outbound.Resilience{}, fmt.Errorf(`config "resilience.failure_accrual.consecutive_failures": %d is negative`, fa.ConsecutiveFailures)
	}
	if fa.MaxEjection.Duration > 0 && fa.MaxEjection.Duration < fa.MinEjection.Duration {
		return outbound.Resilience{}, fmt.Errorf(`config "resilience.failure_accrual.max_ejection": %v is less than min_ejection %v`, fa.MaxEjection.Duration, fa.MinEjection.Duration)
	}
	res := outbound.Resilience{Accrual: balance.AccrualConfig{
		ConsecutiveFailures: fa.ConsecutiveFailures,
		MinEjection:         fa.MinEjection.Duration,
		MaxEjection:         fa.MaxEjection.Duration,
	}}
	var err error
	if res.Default, err = rc.Default.policy("resilience.default"); err != nil {
		return outbound.Resilience{}, err
	}
	for _, svc := range slices.Sorted(maps.Keys(rc.Services)) {
		if svc == "" {
			return outbound.Resilience{}, errors.New(`config "resilience.services": an empty service name`)
		}
		p, err := rc.Services[svc].policy("resilience.services." + svc)
		if err != nil {
			return outbound.Resilience{}, err
		}
		if res.Services == nil {
			res.Services = map[string]outbound.ServicePolicy{}
		}
		res.Services[svc] = p
	}
	return res, nil
}

// policy turns a policy from the file into the outbound's, where a zero
// field inherits and a negative one is "none": a key present with a zero
// value becomes negative.
func (c servicePolicyConfig) policy(key string) (outbound.ServicePolicy, error) {
	none := func(set bool, v time.Duration) time.Duration {
		if set && v == 0 {
			return -1
		}
		return v
	}
	for _, n := range []struct {
		name string
		neg  bool
		v    any
	}{
		{"max_pending", c.MaxPending != nil && *c.MaxPending < 0, c.MaxPending},
		{"max_retries", c.MaxRetries != nil && *c.MaxRetries < 0, c.MaxRetries},
		{"retry_body_bytes", c.RetryBodyBytes != nil && *c.RetryBodyBytes < 0, c.RetryBodyBytes},
		{"retry_budget.ratio", c.RetryBudget.Ratio != nil && *c.RetryBudget.Ratio < 0, c.RetryBudget.Ratio},
		{"retry_budget.min_per_second", c.RetryBudget.MinPerSecond != nil && *c.RetryBudget.MinPerSecond < 0, c.RetryBudget.MinPerSecond},
	} {
		if n.neg {
			return outbound.ServicePolicy{}, fmt.Errorf("config %q: %v is negative (0 means none)", key+"."+n.name, reflect.ValueOf(n.v).Elem())
		}
	}
	p := outbound.ServicePolicy{
		Timeout:               none(c.Timeout.set(), c.Timeout.Duration),
		ResponseHeaderTimeout: none(c.ResponseHeaderTimeout.set(), c.ResponseHeaderTimeout.Duration),
		MaxPending:            orNone(c.MaxPending),
		MaxRetries:            orNone(c.MaxRetries),
		RetryOn:               c.RetryOn,
		RetryGRPCMethods:      c.RetryGRPCMethods,
		RetryOnGRPC:           c.RetryOnGRPC,
		RetryBodyBytes:        orNone(c.RetryBodyBytes),
		RetryBudget:           outbound.RetryBudget{Ratio: orNone(c.RetryBudget.Ratio), MinPerSecond: orNone(c.RetryBudget.MinPerSecond)},
	}
	if err := p.Validate(); err != nil {
		return outbound.ServicePolicy{}, fmt.Errorf("config %q: %w", key, err)
	}
	return p, nil
}

// orNone is a number from the config file as ServicePolicy takes it:
// absent (nil) inherits (0), a present 0 is none (-1).
func orNone[T int | float64](v *T) T {
	switch {
	case v == nil:
		return 0
	case *v == 0:
		return -1
	}
	return *v
}
