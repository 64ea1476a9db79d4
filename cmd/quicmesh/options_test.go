package main

import (
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	dnsdisc "github.com/quicmesh/quicmesh/discovery/dns"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/fallback"
)

// mergeOptionsFrom parses args with quicmesh proxy's flag set and the
// config file text (none if empty), then merges them, with env as
// $SPIFFE_ENDPOINT_SOCKET.
func mergeOptionsFrom(t *testing.T, file string, args []string, env string) (proxyOptions, error) {
	t.Helper()
	c, f := newProxyCommand(io.Discard, io.Discard)
	if code, ok := c.Parse(args); !ok {
		t.Fatalf("flags %q do not parse (exit %d)", args, code)
	}
	f.spiffeSocketEnv = env
	fc := &fileConfig{}
	if file != "" {
		var err error
		if fc, err = parseConfig([]byte(file), "test.json"); err != nil {
			t.Fatalf("config does not parse: %v", err)
		}
	}
	return mergeProxyOptions(fc, f, setFlags(c.Flags))
}

// The merge of file, flags and defaults: which source wins, what each
// error names, and that the result is complete (the whole value is
// compared, names included).
func TestMergeProxyOptions(t *testing.T) {
	id := []string{"--cert", "w.crt", "--key", "w.key", "--bundle", "b.crt"}
	// defaults is what id alone gives: every documented default.
	defaults := func() proxyOptions {
		return proxyOptions{
			logLevel: slog.LevelInfo,
			cert:     "w.crt", key: "w.key", bundle: "b.crt",
			adminAddr: "127.0.0.1:4191",
			sidecar: sidecar.Options{
				InboundAddr: "0.0.0.0:4143",
				Listeners:   sidecar.Listeners{HTTPProxy: "127.0.0.1:4140"},
				Inbound:     inbound.Options{Routes: inbound.Routes{}, Authorization: authz.Default()},
				Outbound:    outbound.Options{Detect: detect.Config{Timeout: time.Second}},
				Transport:   fallback.Auto,
			},
			grace: 30 * time.Second,
			names: settingNames{
				identity: "--cert, --key, --bundle", cert: "--cert", discovery: "--discovery-file",
				listeners: []listenSetting{
					{"--inbound 0.0.0.0:4143", "0.0.0.0:4143"},
					{"--admin 127.0.0.1:4191", "127.0.0.1:4191"},
					{"--http-proxy 127.0.0.1:4140", "127.0.0.1:4140"},
				},
			},
		}
	}
	const sock = "unix:///run/spire/agent.sock"
	// spiffeFrom is defaults() with the identity from the Workload API at
	// addr, named setting.
	spiffeFrom := func(setting, addr string) func(o *proxyOptions) {
		return func(o *proxyOptions) {
			o.cert, o.key, o.bundle = "", "", ""
			o.spiffeSocket = addr
			o.names.identity, o.names.cert = setting, setting
		}
	}
	const ctl = "control.quicmesh:4180"
	// controlFrom is defaults() with the identity and the discovery from
	// the control plane at addr, named setting, trusted with the CA in ca.
	controlFrom := func(setting, caSetting, tokenSetting string, c controlOptions) func(o *proxyOptions) {
		return func(o *proxyOptions) {
			o.cert, o.key, o.bundle = "", "", ""
			o.control = c
			o.names.identity, o.names.cert, o.names.discovery = setting, setting, setting
			o.names.controlCA, o.names.controlToken = caSetting, tokenSetting
		}
	}
	ctlArgs := []string{"--control", ctl, "--control-ca", "ca.crt"}
	tests := []struct {
		name    string
		file    string
		args    []string
		env     string                // $SPIFFE_ENDPOINT_SOCKET
		want    func(o *proxyOptions) // changes to defaults(); nil when an error is wanted
		wantErr string                // the whole error
	}{
		{name: "defaults", args: id, want: func(*proxyOptions) {}},
		{
			name: "authorization from the file",
			file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"default": "deny", "routes": {"api": ["spiffe://test.local/web", "spiffe://partner.org/*"]}}}}`,
			args: id,
			want: func(o *proxyOptions) {
				o.sidecar.Inbound.Routes = inbound.Routes{"api": "127.0.0.1:1"}
				o.sidecar.Inbound.Authorization = mustPolicy(t, authz.Spec{Default: "deny", Routes: map[string][]string{"api": {"spiffe://test.local/web", "spiffe://partner.org/*"}}})
			},
		},
		{
			name: "HTTP rules from the file",
			file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"http_routes": {"api": [{"name": "admin", "path_prefix": "/admin", "methods": ["POST"], "allow": ["spiffe://test.local/ops"]}]}}}}`,
			args: id,
			want: func(o *proxyOptions) {
				o.sidecar.Inbound.Routes = inbound.Routes{"api": "127.0.0.1:1"}
				o.sidecar.Inbound.Authorization = mustPolicy(t, authz.Spec{HTTPRoutes: map[string][]authz.HTTPRoute{"api": {
					{Name: "admin", PathPrefix: "/admin", Methods: []string{"POST"}, Allow: []string{"spiffe://test.local/ops"}}}}})
			},
		},
		{
			name: "--default-inbound-policy beats the file's default, keeps its routes",
			file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"default": "deny", "routes": {"api": ["deny"]}}}}`,
			args: append([]string{"--default-inbound-policy", "unauthenticated"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Inbound.Routes = inbound.Routes{"api": "127.0.0.1:1"}
				o.sidecar.Inbound.Authorization = mustPolicy(t, authz.Spec{Default: "unauthenticated", Routes: map[string][]string{"api": {"deny"}}})
			},
		},
		{
			name: "a rule for a route given by flag",
			file: `{"inbound": {"authorization": {"routes": {"api": ["spiffe://test.local/web"]}}}}`,
			args: append([]string{"--route", "api=127.0.0.1:1"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Inbound.Routes = inbound.Routes{"api": "127.0.0.1:1"}
				o.sidecar.Inbound.Authorization = mustPolicy(t, authz.Spec{Routes: map[string][]string{"api": {"spiffe://test.local/web"}}})
			},
		},
		{
			name: "identity from the file",
			file: `{"identity": {"cert": "f.crt", "key": "f.key", "bundle": "fb.crt", "trust_domain": "other.org"}}`,
			want: func(o *proxyOptions) {
				o.cert, o.key, o.bundle, o.trustDomain = "f.crt", "f.key", "fb.crt", "other.org"
				o.names.identity = `config "identity.cert", config "identity.key", config "identity.bundle"`
				o.names.cert = `config "identity.cert"`
			},
		},
		{
			name: "a flag beats the file",
			file: `{"identity": {"cert": "f.crt"}, "inbound": {"listen": "10.0.0.1:4143"}, "log": {"level": "warn"}}`,
			args: append([]string{"--inbound", "127.0.0.1:5143", "--log-level", "debug", "--log-format", "json"}, id...),
			want: func(o *proxyOptions) {
				o.logLevel, o.logJSON = slog.LevelDebug, true
				o.sidecar.InboundAddr = "127.0.0.1:5143"
				o.names.listeners[0] = listenSetting{"--inbound 127.0.0.1:5143", "127.0.0.1:5143"}
			},
		},
		{
			name: "the file beats a default",
			file: `{"inbound": {"listen": "10.0.0.1:4143"}, "admin": {"listen": ""}, "outbound": {"http_proxy": "", "detect_timeout": "250ms"}, "limits": {"connect_timeout": "2s"}}`,
			args: id,
			want: func(o *proxyOptions) {
				o.sidecar.InboundAddr, o.sidecar.Listeners.HTTPProxy = "10.0.0.1:4143", ""
				o.sidecar.Outbound.Detect.Timeout, o.sidecar.Outbound.ConnectTimeout = 250*time.Millisecond, 2*time.Second
				o.names.listeners[0] = listenSetting{`config "inbound.listen" 10.0.0.1:4143`, "10.0.0.1:4143"}
				// An empty admin.listen is "not set": the default stays.
				o.names.listeners[2] = listenSetting{`config "outbound.http_proxy" `, ""}
			},
		},
		{
			name: "disabled admin server and HTTP proxy by flag",
			args: append([]string{"--admin", "", "--http-proxy", ""}, id...),
			want: func(o *proxyOptions) {
				o.adminAddr, o.sidecar.Listeners.HTTPProxy = "", ""
				o.names.listeners[1] = listenSetting{"--admin ", ""}
				o.names.listeners[2] = listenSetting{"--http-proxy ", ""}
			},
		},
		{
			name: "routes: the file's, a flag overriding one",
			file: `{"inbound": {"routes": {"web": "127.0.0.1:8080", "grpc": "h2c://127.0.0.1:9090"}}}`,
			args: append([]string{"--route", "web=127.0.0.1:8081", "--route", "db=tcp://127.0.0.1:5432"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Inbound.Routes = inbound.Routes{"web": "127.0.0.1:8081", "grpc": "h2c://127.0.0.1:9090", "db": "tcp://127.0.0.1:5432"}
			},
		},
		{
			name: "binds: the file's first, then the flags', each named as written",
			file: `{"outbound": {"binds": [{"listen": "127.0.0.1:7001", "service": "db", "opaque": true}]}, "discovery": {"static": "s.json"}}`,
			args: append([]string{"--bind", "127.0.0.1:7002=web", "--bind", "127.0.0.1:7003=cache,opaque"}, id...),
			want: func(o *proxyOptions) {
				o.discoveryFile, o.names.discovery = "s.json", `config "discovery.static"`
				o.sidecar.Listeners.Binds = []sidecar.Bind{
					{Listen: "127.0.0.1:7001", Service: "db", Opaque: true},
					{Listen: "127.0.0.1:7002", Service: "web"},
					{Listen: "127.0.0.1:7003", Service: "cache", Opaque: true},
				}
				o.names.binds = []string{`config "outbound.binds[0]"`, "--bind 127.0.0.1:7002=web", "--bind 127.0.0.1:7003=cache,opaque"}
				o.names.listeners = append(o.names.listeners,
					listenSetting{`config "outbound.binds[0]"`, "127.0.0.1:7001"},
					listenSetting{"--bind 127.0.0.1:7002=web", "127.0.0.1:7002"},
					listenSetting{"--bind 127.0.0.1:7003=cache,opaque", "127.0.0.1:7003"})
			},
		},
		{
			name: "DNS discovery from the file",
			file: `{"discovery": {"dns": {"zone": "Mesh.Example.", "servers": ["10.0.0.53", "[::1]:5353"], "min_ttl": "2s", "max_ttl": "1m", "timeout": "500ms"}}}`,
			args: id,
			want: func(o *proxyOptions) {
				o.dns = dnsdisc.Options{Zone: "mesh.example", Nameservers: []string{"10.0.0.53:53", "[::1]:5353"},
					MinTTL: 2 * time.Second, MaxTTL: time.Minute, Timeout: 500 * time.Millisecond, MaxEndpoints: dnsdisc.DefaultMaxEndpoints}
				o.names.discovery = `config "discovery.dns.zone"`
			},
		},
		{
			name: "DNS discovery by flag: the flags beat the file's servers; defaults",
			file: `{"discovery": {"dns": {"servers": ["10.0.0.53"]}}}`,
			args: append([]string{"--discovery-dns-zone", "mesh.test", "--discovery-dns-server", "127.0.0.1:5353,127.0.0.2"}, id...),
			want: func(o *proxyOptions) {
				o.dns = dnsdisc.Options{Zone: "mesh.test", Nameservers: []string{"127.0.0.1:5353", "127.0.0.2:53"},
					MinTTL: dnsdisc.DefaultMinTTL, MaxTTL: dnsdisc.DefaultMaxTTL, Timeout: dnsdisc.DefaultTimeout, MaxEndpoints: dnsdisc.DefaultMaxEndpoints}
				o.names.discovery = "--discovery-dns-zone"
			},
		},
		{
			name: "DNS discovery with the nameservers of resolv.conf",
			args: append([]string{"--discovery-dns-zone", "mesh.test"}, id...),
			want: func(o *proxyOptions) {
				o.dns = dnsdisc.Options{Zone: "mesh.test",
					MinTTL: dnsdisc.DefaultMinTTL, MaxTTL: dnsdisc.DefaultMaxTTL, Timeout: dnsdisc.DefaultTimeout, MaxEndpoints: dnsdisc.DefaultMaxEndpoints}
				o.names.discovery = "--discovery-dns-zone"
			},
		},
		{
			name: "limits and the rest",
			file: `{"limits": {"max_streams_per_peer": 50, "stream_window_bytes": 1024, "conn_window_bytes": 4096, "handshake_timeout": "3s", "idle_timeout": "1m", "keep_alive": "10s", "liveness_timeout": "2s",
				"app_connect_timeout": "1s", "header_timeout": "5s", "app_idle_timeout": "2m", "max_header_bytes": 8192, "inbound_max_in_flight": 7},
				"outbound": {"max_in_flight": 9}, "debug": {"qlog_dir": "/tmp/q"}}`,
			args: append([]string{"--grace", "5s", "--admin-shutdown", "--connect-timeout", "4s"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Limits = transport.Limits{MaxIncomingStreams: 50, StreamReceiveWindow: 1024, ConnectionReceiveWindow: 4096,
					HandshakeTimeout: 3 * time.Second, IdleTimeout: time.Minute, KeepAlive: 10 * time.Second, LivenessTimeout: 2 * time.Second}
				o.sidecar.Outbound = outbound.Options{ConnectTimeout: 4 * time.Second, Detect: detect.Config{Timeout: time.Second},
					MaxInFlight: 9, HeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 8192}
				o.sidecar.Inbound = inbound.Options{Routes: inbound.Routes{}, Authorization: authz.Default(), ConnectTimeout: time.Second, HeaderTimeout: 5 * time.Second, MaxInFlight: 7}
				o.sidecar.QlogDir, o.grace, o.allowShutdown = "/tmp/q", 5*time.Second, true
			},
		},

		{name: "dial timeout", file: `{"limits": {"dial_timeout": "250ms"}}`, args: id,
			want: func(o *proxyOptions) { o.sidecar.Limits.DialTimeout = 250 * time.Millisecond }},
		{name: "dial timeout up to a raised handshake timeout", file: `{"limits": {"dial_timeout": "5s", "handshake_timeout": "10s"}}`, args: id,
			want: func(o *proxyOptions) {
				o.sidecar.Limits.DialTimeout, o.sidecar.Limits.HandshakeTimeout = 5*time.Second, 10*time.Second
			}},
		{name: "liveness watch off", file: `{"limits": {"liveness_timeout": "0s"}}`, args: id,
			want: func(o *proxyOptions) { o.sidecar.Limits.LivenessTimeout = -1 }},
		{
			name: "transport from the file, race delay by flag",
			file: `{"transport": {"mode": "tcp", "race_delay": "1s", "reprobe_min": "2s", "reprobe_max": "1m"}}`,
			args: append([]string{"--race-delay", "100ms"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Transport = fallback.TCP
				o.sidecar.Fallback = sidecar.Fallback{RaceDelay: 100 * time.Millisecond, ReprobeMin: 2 * time.Second, ReprobeMax: time.Minute}
			},
		},
		{name: "transport by flag beats the file", file: `{"transport": {"mode": "tcp"}}`, args: append([]string{"--transport", "quic"}, id...),
			want: func(o *proxyOptions) { o.sidecar.Transport = fallback.QUIC }},
		{name: "plain HTTP/3 from the file", file: `{"inbound": {"h3": true}}`, args: id,
			want: func(o *proxyOptions) { o.sidecar.InboundH3 = true }},
		{name: "plain HTTP/3 by flag", args: append([]string{"--inbound-h3"}, id...),
			want: func(o *proxyOptions) { o.sidecar.InboundH3 = true }},
		{name: "plain HTTP/3 off by flag beats the file", file: `{"inbound": {"h3": true}}`, args: append([]string{"--inbound-h3=false"}, id...),
			want: func(o *proxyOptions) {}},

		// The transparent path: config keys, flags beating them.
		{
			name: "transparent path from the file",
			file: `{"outbound": {"transparent": "127.0.0.1:4145"}, "inbound": {"plain_listen": "0.0.0.0:4146", "plain_policy": "strict", "app_host": "10.0.0.7", "app_ports": [8080, 9090]}}`,
			args: id,
			want: func(o *proxyOptions) {
				o.sidecar.Listeners.Transparent, o.sidecar.Listeners.PlainInbound = "127.0.0.1:4145", "0.0.0.0:4146"
				o.sidecar.Listeners.PlainPolicy = inbound.PlainStrict
				o.sidecar.Inbound.AppHost, o.sidecar.Inbound.AppPorts = "10.0.0.7", []uint16{8080, 9090}
				o.names.listeners = append(o.names.listeners,
					listenSetting{`config "outbound.transparent" 127.0.0.1:4145`, "127.0.0.1:4145"},
					listenSetting{`config "inbound.plain_listen" 0.0.0.0:4146`, "0.0.0.0:4146"})
			},
		},
		{
			name: "transparent path flags beat the file",
			file: `{"outbound": {"transparent": "127.0.0.1:4145"}, "inbound": {"plain_listen": "0.0.0.0:4146", "plain_policy": "strict", "app_host": "10.0.0.7", "app_ports": [8080]}}`,
			args: append([]string{"--transparent", "127.0.0.1:5145", "--plain-inbound", "0.0.0.0:5146", "--plain-policy", "permissive", "--app-host", "10.0.0.8", "--app-ports", "7070"}, id...),
			want: func(o *proxyOptions) {
				o.sidecar.Listeners.Transparent, o.sidecar.Listeners.PlainInbound = "127.0.0.1:5145", "0.0.0.0:5146"
				o.sidecar.Listeners.PlainPolicy = inbound.PlainPermissive
				o.sidecar.Inbound.AppHost, o.sidecar.Inbound.AppPorts = "10.0.0.8", []uint16{7070}
				o.names.listeners = append(o.names.listeners,
					listenSetting{"--transparent 127.0.0.1:5145", "127.0.0.1:5145"},
					listenSetting{"--plain-inbound 0.0.0.0:5146", "0.0.0.0:5146"})
			},
		},

		// Identity sources: the command line, then the file, then the
		// environment; the first that names one decides.
		{name: "Workload API by flag", args: []string{"--spiffe-socket", sock}, env: "unix:///env.sock", want: spiffeFrom("--spiffe-socket", sock)},
		{name: "Workload API from the file", file: `{"identity": {"spiffe_socket": "` + sock + `"}}`, env: "unix:///env.sock",
			want: spiffeFrom(`config "identity.spiffe_socket"`, sock)},
		{name: "Workload API from the environment", env: sock, want: spiffeFrom("SPIFFE_ENDPOINT_SOCKET", sock)},
		{name: "files by flag beat the environment", args: id, env: sock, want: func(*proxyOptions) {}},
		{name: "files in the file beat the environment", file: `{"identity": {"cert": "w.crt", "key": "w.key", "bundle": "b.crt"}}`, env: sock,
			want: func(o *proxyOptions) {
				o.names.identity = `config "identity.cert", config "identity.key", config "identity.bundle"`
				o.names.cert = `config "identity.cert"`
			}},
		{name: "--spiffe-socket beats files in the file", file: `{"identity": {"cert": "f.crt", "key": "f.key", "bundle": "fb.crt"}}`,
			args: []string{"--spiffe-socket", sock}, want: spiffeFrom("--spiffe-socket", sock)},
		{name: "files by flag beat the file's socket", file: `{"identity": {"spiffe_socket": "` + sock + `"}}`, args: id, want: func(*proxyOptions) {}},
		{name: "federated bundles and accepted trust domains by flag",
			file: `{"identity": {"federated_bundles": {"file.org": "file.pem"}, "accept_trust_domains": ["file.org"]}}`,
			args: append([]string{"--federated-bundle", "other.org=o.pem", "--federated-bundle", "third.org=t.pem", "--accept-trust-domain", "other.org", "--trust-domain", "example.org"}, id...),
			want: func(o *proxyOptions) {
				o.federatedBundles = map[string]string{"other.org": "o.pem", "third.org": "t.pem"}
				o.acceptTrustDomains = []string{"other.org"}
				o.trustDomain = "example.org"
				o.names.identity += ", --federated-bundle"
			}},
		{name: "federated bundles and accepted trust domains from the file",
			file: `{"identity": {"federated_bundles": {"other.org": "o.pem"}, "accept_trust_domains": ["other.org", "third.org"]}}`, args: id,
			want: func(o *proxyOptions) {
				o.federatedBundles = map[string]string{"other.org": "o.pem"}
				o.acceptTrustDomains = []string{"other.org", "third.org"}
				o.names.identity += `, config "identity.federated_bundles"`
			}},
		{name: "accepted trust domains with the Workload API", args: []string{"--spiffe-socket", sock, "--accept-trust-domain", "other.org"},
			want: func(o *proxyOptions) {
				spiffeFrom("--spiffe-socket", sock)(o)
				o.acceptTrustDomains = []string{"other.org"}
			}},
		// The control plane: identity and discovery at once.
		{name: "control plane by flag, defaults", args: ctlArgs, env: sock,
			want: controlFrom("--control", "--control-ca", "--control-token",
				controlOptions{addr: ctl, ca: "ca.crt", tokenFile: "/var/run/secrets/quicmesh/token"})},
		{name: "control plane from the file",
			file: `{"control": {"address": "` + ctl + `", "ca": "f.crt", "id": "spiffe://mesh.test/ns/q/sa/cp", "token_file": "/t"}, "identity": {"trust_domain": "mesh.test"}}`,
			want: func(o *proxyOptions) {
				controlFrom(`config "control.address"`, `config "control.ca"`, `config "control.token_file"`,
					controlOptions{addr: ctl, ca: "f.crt", id: identity.MustParseID("spiffe://mesh.test/ns/q/sa/cp"), tokenFile: "/t"})(o)
				o.trustDomain = "mesh.test"
			}},
		{name: "control plane: flags beat the file",
			file: `{"control": {"address": "10.0.0.1:1", "ca": "f.crt", "id": "spiffe://mesh.test/ns/q/sa/cp", "token_file": "/t"}}`,
			args: append([]string{"--control-id", "spiffe://other.test/cp", "--control-token", "/flag/token"}, ctlArgs...),
			want: controlFrom("--control", "--control-ca", "--control-token",
				controlOptions{addr: ctl, ca: "ca.crt", id: identity.MustParseID("spiffe://other.test/cp"), tokenFile: "/flag/token"})},
		{name: "dial timeout 0s", file: `{"limits": {"dial_timeout": "0s"}}`, args: id,
			wantErr: `config "limits.dial_timeout": must be positive (omit it for the default, 1s)`},
		{name: "dial timeout above the default handshake timeout", file: `{"limits": {"dial_timeout": "4s"}}`, args: id,
			wantErr: `config "limits.dial_timeout" 4s: longer than "limits.handshake_timeout" (3s), which bounds the whole dial`},
		{name: "dial timeout above the handshake timeout", file: `{"limits": {"dial_timeout": "2s", "handshake_timeout": "1s"}}`, args: id,
			wantErr: `config "limits.dial_timeout" 2s: longer than "limits.handshake_timeout" (1s), which bounds the whole dial`},
		{name: "plain HTTP/3 without QUIC", file: `{"inbound": {"h3": true}}`, args: append([]string{"--transport", "tcp"}, id...),
			wantErr: `config "inbound.h3": HTTP/3 needs QUIC, and transport mode tcp serves none`},
		{name: "plain HTTP/3 by flag without QUIC", file: `{"transport": {"mode": "tcp"}}`, args: append([]string{"--inbound-h3"}, id...),
			wantErr: `--inbound-h3: HTTP/3 needs QUIC, and transport mode tcp serves none`},
		{name: "unknown transport", file: `{"transport": {"mode": "sctp"}}`, args: id,
			wantErr: `config "transport.mode": fallback: transport "sctp": want quic, tcp or auto`},
		{name: "transparent listener in the file not an address", file: `{"outbound": {"transparent": "4145"}}`, args: id,
			wantErr: `config "outbound.transparent" 4145: not a HOST:PORT address`},
		{name: "plain policy in the file unknown", file: `{"inbound": {"plain_listen": ":4146", "plain_policy": "lax"}}`, args: id,
			wantErr: `config "inbound.plain_policy": plain TCP policy "lax": want permissive or strict`},
		{name: "app host in the file not an IP", file: `{"inbound": {"app_host": "localhost"}}`, args: id,
			wantErr: `config "inbound.app_host" localhost: not an IP address`},
		{name: "app port in the file out of range", file: `{"inbound": {"app_ports": [8080, 70000]}}`, args: id,
			wantErr: `config "inbound.app_ports": 70000 is not a port`},
		{name: "control plane without its CA", args: []string{"--control", ctl},
			wantErr: "--control: no CA to verify the control plane with: set --control-ca (or control.ca), e.g. the mesh CA's ca.crt"},
		{name: "control plane address without port", file: `{"control": {"address": "control.quicmesh", "ca": "ca.crt"}}`,
			wantErr: `config "control.address" control.quicmesh: not a HOST:PORT address`},
		{name: "bad control plane ID", args: append([]string{"--control-id", "quicmesh-control"}, ctlArgs...),
			wantErr: `--control-id: identity: "quicmesh-control" is not a SPIFFE ID: scheme must be spiffe://`},
		{name: "empty token file", args: append([]string{"--control-token", ""}, ctlArgs...),
			wantErr: "--control-token: empty: certification needs the ServiceAccount token file"},
		{name: "control CA without a control plane", args: append([]string{"--control-ca", "ca.crt"}, id...),
			wantErr: "--control-ca: only with --control (or control.address)"},
		{name: "control token in the file without a control plane", file: `{"control": {"token_file": "/t"}}`, args: id,
			wantErr: `config "control.token_file": only with --control (or control.address)`},
		{name: "control plane and a certificate", args: append(ctlArgs, "--cert", "w.crt"),
			wantErr: "--control and --cert name two identity sources: use one"},
		{name: "control plane and the Workload API in the file", file: `{"identity": {"spiffe_socket": "` + sock + `"}}`, args: ctlArgs,
			wantErr: `--control and config "identity.spiffe_socket" name two identity sources: use one`},
		{name: "control plane in the file and a bundle by flag", file: `{"control": {"address": "` + ctl + `", "ca": "ca.crt"}}`, args: []string{"--bundle", "b.crt"},
			wantErr: `config "control.address" and --bundle name two identity sources: use one`},
		{name: "control plane and a discovery file", args: append(ctlArgs, "--discovery-file", "s.json"),
			wantErr: "--control and --discovery-file name two discoveries: use one"},
		{name: "control plane and DNS discovery in the file", file: `{"discovery": {"dns": {"zone": "mesh.test"}}}`, args: ctlArgs,
			wantErr: `--control and config "discovery.dns.zone" name two discoveries: use one`},
		{name: "control plane and DNS servers", args: append(ctlArgs, "--discovery-dns-server", "127.0.0.1"),
			wantErr: "--control and --discovery-dns-server name two discoveries: use one"},
		{name: "control plane and a federated trust domain", args: append(ctlArgs, "--accept-trust-domain", "other.org"),
			wantErr: "--accept-trust-domain with --control: the control plane sends no federated trust bundles, so only its own trust domain can be verified"},

		{name: "both sources by flag", args: append([]string{"--spiffe-socket", sock}, id...),
			wantErr: "--spiffe-socket and --cert/--key/--bundle/--federated-bundle name two identity sources: use one"},
		{name: "federated bundle flag with the Workload API", args: []string{"--spiffe-socket", sock, "--federated-bundle", "other.org=o.pem"},
			wantErr: "--spiffe-socket and --cert/--key/--bundle/--federated-bundle name two identity sources: use one"},
		{name: "both sources in the file", file: `{"identity": {"spiffe_socket": "` + sock + `", "bundle": "b.crt"}}`,
			wantErr: `config "identity.spiffe_socket" and "identity.cert"/"key"/"bundle"/"federated_bundles" name two identity sources: use one`},
		{name: "no identity at all",
			wantErr: "no workload identity: set --cert, --key and --bundle (or identity.cert, .key, .bundle), or --spiffe-socket (identity.spiffe_socket, SPIFFE_ENDPOINT_SOCKET); quicmesh never runs without mTLS"},
		{name: "socket without a scheme", args: []string{"--spiffe-socket", "/run/agent.sock"},
			wantErr: `--spiffe-socket: spiffe: Workload API address "/run/agent.sock": workload endpoint socket URI must have a "tcp" or "unix" scheme`},
		{name: "bad socket in the environment", env: "agent.sock",
			wantErr: `SPIFFE_ENDPOINT_SOCKET: spiffe: Workload API address "agent.sock": workload endpoint socket URI must have a "tcp" or "unix" scheme`},
		{name: "bad federated trust domain", args: append([]string{"--federated-bundle", "Other.org=o.pem"}, id...),
			wantErr: `--federated-bundle Other.org=o.pem: identity: "Other.org" is not a trust domain name (lower-case letters, digits, '-', '.', '_')`},
		{name: "bad accepted trust domain in the file", file: `{"identity": {"accept_trust_domains": ["spiffe://x"]}}`, args: id,
			wantErr: `config "identity.accept_trust_domains" spiffe://x: identity: "spiffe://x" is not a trust domain name (lower-case letters, digits, '-', '.', '_')`},
		{name: "bad trust domain flag", args: append([]string{"--trust-domain", "a/b"}, id...),
			wantErr: `--trust-domain: identity: "a/b" is not a trust domain name (lower-case letters, digits, '-', '.', '_')`},
		{name: "no cert", args: []string{"--key", "k", "--bundle", "b"}, wantErr: "no workload certificate: set --cert (or identity.cert); quicmesh never runs without mTLS"},
		{name: "no key", args: []string{"--cert", "c", "--bundle", "b"}, wantErr: "no private key: set --key (or identity.key)"},
		{name: "no bundle", file: `{"identity": {"cert": "c", "key": "k"}}`, wantErr: "no trust bundle: set --bundle (or identity.bundle)"},
		{name: "bad log level flag", args: append([]string{"--log-level", "loud"}, id...), wantErr: `--log-level: unknown log level "loud": want debug, info, warn or error`},
		{name: "bad log level in the file", file: `{"log": {"level": "loud"}}`, args: id, wantErr: `config "log.level": unknown log level "loud": want debug, info, warn or error`},
		{name: "bad log format in the file", file: `{"log": {"format": "xml"}}`, args: id, wantErr: `config "log.format": unknown log format "xml": want text or json`},
		{name: "bad route flag", args: append([]string{"--route", "echo=ftp://x:1"}, id...), wantErr: `--route echo=ftp://x:1: route "ftp://x:1": unknown app protocol "ftp" (want http, h2c or tcp)`},
		{name: "bad route in the file", file: `{"inbound": {"routes": {"echo": "ftp://x:1"}}}`, args: id, wantErr: `config "inbound.routes.echo": route "ftp://x:1": unknown app protocol "ftp" (want http, h2c or tcp)`},
		{name: "bind without service in the file", file: `{"outbound": {"binds": [{"listen": "127.0.0.1:1"}]}}`, args: id, wantErr: `config "outbound.binds[0]": needs both "listen" and "service"`},
		{name: "bind with an empty service", args: append([]string{"--bind", "127.0.0.1:1=,opaque"}, id...), wantErr: "--bind 127.0.0.1:1=,opaque: no service name (want LISTEN_ADDR=SERVICE[,opaque])"},
		{name: "bind with an unknown option", args: append([]string{"--bind", "127.0.0.1:0=echo,fast"}, id...), wantErr: `--bind 127.0.0.1:0=echo,fast: unknown option "fast" (want opaque)`},
		{name: "bind address without port", args: append([]string{"--bind", "localhost=echo"}, id...), wantErr: "--bind localhost=echo: not a HOST:PORT address"},
		{name: "inbound address without port in the file", file: `{"inbound": {"listen": "10.0.0.1"}}`, args: id, wantErr: `config "inbound.listen" 10.0.0.1: not a HOST:PORT address`},
		{name: "empty inbound address", args: append([]string{"--inbound", ""}, id...), wantErr: "--inbound : not a HOST:PORT address"},
		{name: "admin address without port", args: append([]string{"--admin", "localhost"}, id...), wantErr: "--admin localhost: not a HOST:PORT address"},
		{name: "HTTP proxy address without port in the file", file: `{"outbound": {"http_proxy": "localhost"}}`, args: id, wantErr: `config "outbound.http_proxy" localhost: not a HOST:PORT address`},
		{name: "static and DNS discovery", file: `{"discovery": {"static": "s.json"}}`, args: append([]string{"--discovery-dns-zone", "mesh.test"}, id...),
			wantErr: `config "discovery.static" and --discovery-dns-zone: choose one discovery, a static file or DNS`},
		{name: "bad DNS zone", args: append([]string{"--discovery-dns-zone", "mesh..test"}, id...), wantErr: `--discovery-dns-zone: dns: zone "mesh..test": empty or over-long label`},
		{name: "DNS server by host name in the file", file: `{"discovery": {"dns": {"zone": "mesh.test", "servers": ["ns.example"]}}}`, args: id,
			wantErr: `config "discovery.dns.servers": dns: nameserver "ns.example": want IP or IP:PORT`},
		{name: "DNS server without a zone", args: append([]string{"--discovery-dns-server", "127.0.0.1"}, id...),
			wantErr: "--discovery-dns-server: nameservers without a zone: set --discovery-dns-zone (or discovery.dns.zone)"},
		{name: "DNS min TTL above max TTL", file: `{"discovery": {"dns": {"zone": "mesh.test", "min_ttl": "1m", "max_ttl": "1s"}}}`, args: id,
			wantErr: `config "discovery.dns": dns: min TTL 1m0s is above max TTL 1s`},
		{name: "authorization for a route not served", file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"routes": {"apj": ["deny"]}}}}`, args: id,
			wantErr: `config "inbound.authorization.routes.apj": no such inbound route (inbound.routes, --route)`},
		{name: "HTTP rules for a route not served", file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"http_routes": {"apj": [{"path": "/", "allow": ["deny"]}]}}}}`, args: id,
			wantErr: `config "inbound.authorization.http_routes.apj": no such inbound route (inbound.routes, --route)`},
		{name: "an HTTP rule with a bad path", file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"http_routes": {"api": [{"path": "/a/../b", "allow": ["deny"]}]}}}}`, args: id,
			wantErr: `config "inbound.authorization": authorization http_routes for route "api": rule "#0": path: "/a/../b" is not a canonical path (no empty, . or .. segments, no ; \ or %)`},
		{name: "bad caller in the file", file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"routes": {"api": ["spiffe://test.local"]}}}}`, args: id,
			wantErr: `config "inbound.authorization": authorization for route "api": "spiffe://test.local" names a trust domain, not a workload: write "spiffe://test.local/*" for any identity in it`},
		{name: "empty caller list in the file", file: `{"inbound": {"routes": {"api": "127.0.0.1:1"}, "authorization": {"routes": {"api": []}}}}`, args: id,
			wantErr: `config "inbound.authorization": authorization for route "api": no callers listed: to refuse every caller write ["deny"]`},
		{name: "bad default policy flag", args: append([]string{"--default-inbound-policy", "open"}, id...),
			wantErr: `--default-inbound-policy open: authorization default: unknown caller "open": want a SPIFFE ID (spiffe://TD/PATH), a trust domain (spiffe://TD/*), "all-authenticated", "unauthenticated" or "deny"`},
		{name: "negative grace", args: append([]string{"--grace", "-1s"}, id...), wantErr: "--grace -1s: must not be negative"},
		{name: "negative detect timeout", args: append([]string{"--detect-timeout", "-5ms"}, id...), wantErr: "--detect-timeout -5ms: must not be negative"},
		{name: "negative connect timeout", args: append([]string{"--connect-timeout", "-1m"}, id...), wantErr: "--connect-timeout -1m0s: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := mergeOptionsFrom(t, tt.file, tt.args, tt.env)
			if tt.want == nil {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q is more than one line", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			want := defaults()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("options differ\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
}

func mustPolicy(t *testing.T, s authz.Spec) *authz.Policy {
	t.Helper()
	p, err := authz.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
