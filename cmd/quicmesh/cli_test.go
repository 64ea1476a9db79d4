package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/dns"

	"github.com/quicmesh/quicmesh/internal/cli/clitest"
)

// Every command keeps internal/cli's contract: --help is usage on stdout
// and exit 0; a malformed command line is one line on stderr and exit 2; a
// configuration error is one line naming the flag or config key and exit
// 1, with nothing logged before it.
func TestCommandLineContract(t *testing.T) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	disco := write("services.json", `{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "spiffe://test.local/echo"}]}}}`)
	badDuration := write("bad-duration.json", `{"outbound": {"detect_timeout": "3x"}}`)
	numericDuration := write("numeric-duration.json", `{"limits": {"idle_timeout": 30}}`)
	unknownKey := write("unknown-key.json", `{"identity": {"crt": "x"}}`)
	badBind := write("bad-bind.json", `{"outbound": {"binds": [{"listen": "127.0.0.1:0"}]}}`)

	inUse, udpInUse := takenAddrs(t)
	nxdomain := nxdomainServer(t)
	httpProxyTakenConfig := write("http-proxy-taken.json", `{"outbound": {"http_proxy": "`+inUse+`"}}`)

	id := []string{"--cert", cert, "--key", key, "--bundle", bundle}
	// A sidecar that would start: every listener on a free port.
	proxy := func(extra ...string) []string {
		args := append([]string{"proxy", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0"}, id...)
		return append(args, extra...)
	}
	// A sidecar of the control plane (none listens at 127.0.0.1:1: it
	// fails before it dials).
	caFile, token := filepath.Join(dir, "ca", "ca.crt"), write("token", "t")
	ctl := func(extra ...string) []string {
		args := []string{"proxy", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0",
			"--control", "127.0.0.1:1", "--control-ca", caFile, "--control-token", token}
		return append(args, extra...)
	}
	const (
		help   = 0
		config = 1
		usage  = 2
	)
	tests := []struct {
		name string
		args []string
		code int
		want string // on stdout for help, in the one stderr line otherwise
	}{
		{"quicmesh --help", []string{"--help"}, help, "quicmesh proxy [flags]"},
		{"quicmesh -h", []string{"-h"}, help, "quicmesh proxy [flags]"},
		{"quicmesh help", []string{"help"}, help, "quicmesh proxy [flags]"},
		{"quicmesh", nil, usage, "quicmesh: missing command (want ca, gateway, init, inject or proxy); see 'quicmesh --help'"},
		{"quicmesh moved command", []string{"demo"}, usage, `quicmesh: "demo" is a quicmesh-dev command: run 'quicmesh-dev demo'`},
		{"quicmesh unknown command", []string{"frob"}, usage, `quicmesh: unknown command "frob"`},
		{"quicmesh unknown flag", []string{"--frob"}, usage, "quicmesh: unknown flag --frob"},

		{"gateway --help", []string{"gateway", "--help"}, help, "Usage: quicmesh gateway"},
		{"gateway unknown flag", []string{"gateway", "--frob"}, usage, "quicmesh gateway: unknown flag --frob; see 'quicmesh gateway --help'"},
		{"gateway without exports", []string{"gateway", "--discovery-file", "x.json"}, config, "quicmesh gateway: --export is required"},

		{"proxy --help", []string{"proxy", "--help"}, help, "-http-proxy string"},
		{"proxy -h", []string{"proxy", "-h"}, help, "Usage: quicmesh proxy"},
		{"proxy unknown flag", []string{"proxy", "--frob"}, usage, "quicmesh proxy: unknown flag --frob; see 'quicmesh proxy --help'"},
		{"proxy missing value", []string{"proxy", "--cert"}, usage, "quicmesh proxy: flag needs a value: --cert"},
		{"proxy unexpected argument", proxy("extra"), usage, `quicmesh proxy: unexpected argument "extra"`},
		{"proxy bind without service", []string{"proxy", "--bind", "127.0.0.1:7011"}, config, `quicmesh proxy: --bind: invalid value "127.0.0.1:7011": want LISTEN_ADDR=SERVICE[,opaque]`},
		{"proxy bind given twice", []string{"proxy", "--bind", "127.0.0.1:7011=a", "--bind", "127.0.0.1:7011=b"}, config, `--bind: invalid value "127.0.0.1:7011=b": "127.0.0.1:7011" given twice`},
		{"proxy bad duration flag", []string{"proxy", "--grace", "3x"}, config, `quicmesh proxy: --grace: invalid value "3x": want a duration`},
		{"proxy bad bool flag", []string{"proxy", "--admin-shutdown=maybe"}, config, `--admin-shutdown: invalid value "maybe"`},
		{"proxy no cert", []string{"proxy", "--key", key, "--bundle", bundle}, config, "no workload certificate: set --cert (or identity.cert)"},
		{"proxy missing cert file", []string{"proxy", "--cert", filepath.Join(dir, "nope.crt"), "--key", key, "--bundle", bundle}, config, "--cert, --key, --bundle: identity: reading certificate " + filepath.Join(dir, "nope.crt")},
		{"proxy bad duration in config", proxy("--config", badDuration), config, `config ` + badDuration + `: "outbound.detect_timeout": invalid duration "3x"`},
		{"proxy numeric duration in config", proxy("--config", numericDuration), config, `"limits.idle_timeout": invalid duration 30 (want a string such as "5s")`},
		{"proxy unknown config key", proxy("--config", unknownKey), config, `unknown field "crt"`},
		{"proxy config bind without service", proxy("--config", badBind), config, `config "outbound.binds[0]": needs both "listen" and "service"`},
		{"proxy missing config file", proxy("--config", filepath.Join(dir, "missing.json")), config, "missing.json"},
		{"proxy bad log level", proxy("--log-level", "loud"), config, `--log-level: unknown log level "loud"`},
		{"proxy bad log format", proxy("--log-format", "xml"), config, `--log-format: unknown log format "xml"`},
		{"proxy bad route", proxy("--route", "echo=ftp://x:1"), config, `--route echo=ftp://x:1: route "ftp://x:1": unknown app protocol "ftp"`},
		{"proxy bad bind option", proxy("--discovery-file", disco, "--bind", "127.0.0.1:0=echo,fast"), config, `--bind 127.0.0.1:0=echo,fast: unknown option "fast"`},
		{"proxy bind address without port", proxy("--discovery-file", disco, "--bind", "localhost=echo"), config, "--bind localhost=echo: not a HOST:PORT address"},
		{"proxy unknown service", proxy("--discovery-file", disco, "--bind", "127.0.0.1:0=nosuch"), config, `--bind 127.0.0.1:0=nosuch: service "nosuch" is not in the discovery file ` + disco},
		{"proxy bind without discovery", proxy("--bind", "127.0.0.1:0=echo"), config, `--bind 127.0.0.1:0=echo: service "echo" is unknown: there is no discovery file (--discovery-file)`},
		{"proxy static and DNS discovery", proxy("--discovery-file", disco, "--discovery-dns-zone", "mesh.test"), config, "--discovery-file and --discovery-dns-zone: choose one discovery, a static file or DNS"},
		{"proxy bad DNS server", proxy("--discovery-dns-zone", "mesh.test", "--discovery-dns-server", "ns.example"), config, `--discovery-dns-server: dns: nameserver "ns.example": want IP or IP:PORT`},
		{"proxy unknown service in DNS", proxy("--discovery-dns-zone", "mesh.test", "--discovery-dns-server", nxdomain, "--bind", "127.0.0.1:0=nosuch"), config,
			`--bind 127.0.0.1:0=nosuch: dns: resolve "nosuch": no SRV records at _quicmesh._udp.nosuch.mesh.test.: discovery: unknown service`},
		{"proxy missing discovery file", proxy("--discovery-file", filepath.Join(dir, "missing.json")), config, "--discovery-file: "},
		{"proxy http proxy port taken", proxy("--http-proxy", inUse), config, "quicmesh proxy: --http-proxy " + inUse + `: bind: address already in use (in use by another process: two sidecars on one host need different ports, or --http-proxy "" disables this listener)`},
		{"proxy http proxy port taken (config)", append([]string{"proxy", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--config", httpProxyTakenConfig}, id...), config,
			`quicmesh proxy: config "outbound.http_proxy" ` + inUse + ": bind: address already in use"},
		{"proxy admin port taken", proxy("--admin", inUse), config, "quicmesh proxy: --admin " + inUse + ": bind: address already in use"},
		{"proxy inbound port taken", proxy("--inbound", udpInUse), config, "quicmesh proxy: --inbound " + udpInUse + ": bind: address already in use"},
		{"proxy bind port taken", proxy("--discovery-file", disco, "--bind", inUse+"=echo"), config, "quicmesh proxy: --bind " + inUse + "=echo: bind: address already in use"},

		{"proxy --help shows --control", []string{"proxy", "--help"}, help, "-control-ca string"},
		{"proxy control without its CA", []string{"proxy", "--control", "127.0.0.1:1"}, config,
			"quicmesh proxy: --control: no CA to verify the control plane with: set --control-ca (or control.ca), e.g. the mesh CA's ca.crt"},
		{"proxy control and a certificate", proxy("--control", "127.0.0.1:1", "--control-ca", caFile), config, "quicmesh proxy: --control and --cert name two identity sources: use one"},
		{"proxy control and a discovery file", ctl("--discovery-file", disco), config, "quicmesh proxy: --control and --discovery-file name two discoveries: use one"},
		{"proxy control ID without control", proxy("--control-id", "spiffe://test.local/cp"), config, "quicmesh proxy: --control-id: only with --control (or control.address)"},
		{"proxy control CA missing", ctl("--control-ca", filepath.Join(dir, "nope.crt")), config, "quicmesh proxy: --control-ca: open " + filepath.Join(dir, "nope.crt") + ": no such file or directory"},
		{"proxy control CA not PEM", ctl("--control-ca", disco), config, "quicmesh proxy: --control-ca: " + disco + ": no PEM certificate"},
		{"proxy control CA without trust domain", ctl("--control-ca", cert), config,
			"quicmesh proxy: --control-ca: " + cert + " has no SPIFFE trust domain URI to derive the control plane's ID from: set --control-id (or control.id)"},
		{"proxy control token missing", ctl("--control-token", filepath.Join(dir, "nope")), config,
			"quicmesh proxy: --control-token: stat " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"proxy control admin port taken", ctl("--admin", inUse), config, "quicmesh proxy: --admin " + inUse + ": bind: address already in use"},

		{"init --help", []string{"init", "--help"}, help, "-skip-outbound-cidrs CIDRS"},
		{"init unknown flag", []string{"init", "--frob"}, usage, "quicmesh init: unknown flag --frob; see 'quicmesh init --help'"},
		{"init unexpected argument", []string{"init", "--undo", "x"}, usage, `quicmesh init: unexpected argument "x"`},
		{"init without proxy uid", []string{"init", "--dry-run"}, config, "quicmesh init: --proxy-uid is required"},
		{"init proxy uid 0", []string{"init", "--dry-run", "--proxy-uid", "0"}, config, "quicmesh init: --proxy-uid 0: the sidecar must not run as root"},
		{"init proxy uid name", []string{"init", "--proxy-uid", "envoy"}, config, `quicmesh init: --proxy-uid: invalid value "envoy": want a numeric UID`},
		{"init bad port", []string{"init", "--proxy-uid", "7", "--outbound-port", "70000"}, config, `quicmesh init: --outbound-port: invalid value "70000": want a port from 1 to 65535`},
		{"init same ports", []string{"init", "--dry-run", "--proxy-uid", "7", "--inbound-port", "4145"}, config, "quicmesh init: --outbound-port and --inbound-port are both 4145: each needs its own port"},
		{"init bad skip port", []string{"init", "--proxy-uid", "7", "--skip-inbound-ports", "22,0"}, config, `quicmesh init: --skip-inbound-ports: invalid value "22,0": "0": want a port`},
		{"init backwards range", []string{"init", "--proxy-uid", "7", "--skip-outbound-ports", "90-80"}, config, `--skip-outbound-ports: invalid value "90-80": "90-80": range ends before it starts`},
		{"init bad cidr", []string{"init", "--proxy-uid", "7", "--skip-outbound-cidrs", "10.0.0.0/33"}, config, `quicmesh init: --skip-outbound-cidrs: invalid value "10.0.0.0/33": "10.0.0.0/33": want a CIDR`},
		{"init cidr with host bits", []string{"init", "--proxy-uid", "7", "--skip-outbound-cidrs", "10.1.2.3/8"}, config, `host bits set (did you mean 10.0.0.0/8?)`},
		{"init dry run", []string{"init", "--dry-run", "--proxy-uid", "7"}, help, "iptables -t nat -I OUTPUT 1 -p tcp"},
		{"init undo dry run", []string{"init", "--undo", "--dry-run"}, help, "ip6tables -t nat -X QUICMESH_OUTPUT"},

		{"inject --help", []string{"inject", "--help"}, help, "-ca-configmap string"},
		{"inject missing file", []string{"inject", "-f", filepath.Join(dir, "nope.yaml")}, config, "quicmesh inject: -f: open " + filepath.Join(dir, "nope.yaml")},
		{"inject bad uid", []string{"inject", "-f", disco, "--proxy-uid", "0"}, config, "quicmesh inject: --proxy-uid 0: the proxy must not run as root"},
		{"inject unexpected argument", []string{"inject", "x"}, usage, `quicmesh inject: unexpected argument "x"`},
		{"ca --help", []string{"ca", "--help"}, help, "quicmesh ca issue --id SPIFFE_ID"},
		{"ca help", []string{"ca", "help"}, help, "quicmesh ca init"},
		{"ca", []string{"ca"}, usage, "quicmesh ca: missing command (want init, intermediate or issue)"},
		{"ca unknown subcommand", []string{"ca", "frob"}, usage, `quicmesh ca: unknown command "frob" (want init, intermediate or issue)`},
		{"ca init --help", []string{"ca", "init", "--help"}, help, "-trust-domain string"},
		{"ca init unknown flag", []string{"ca", "init", "--frob"}, usage, "quicmesh ca init: unknown flag --frob"},
		{"ca init unexpected argument", []string{"ca", "init", "x"}, usage, `quicmesh ca init: unexpected argument "x"`},
		{"ca init bad lifetime", []string{"ca", "init", "--lifetime", "3x"}, config, `quicmesh ca init: --lifetime: invalid value "3x"`},
		{"ca init existing", []string{"ca", "init", "--dir", filepath.Join(dir, "ca")}, config, "quicmesh ca init: --dir " + filepath.Join(dir, "ca") + ": identity: refusing to overwrite existing"},
		{"ca init bad path length", []string{"ca", "init", "--dir", filepath.Join(dir, "ca2"), "--path-len", "2"}, config, "quicmesh ca init: --path-len 2: want 0 or 1"},
		{"ca intermediate --help", []string{"ca", "intermediate", "--help"}, help, "-root-dir string"},
		{"ca intermediate without dirs", []string{"ca", "intermediate", "--out", filepath.Join(dir, "i")}, config, "quicmesh ca intermediate: --root-dir and --out are required"},
		{"ca intermediate leaves-only root", []string{"ca", "intermediate", "--root-dir", filepath.Join(dir, "ca"), "--out", filepath.Join(dir, "i")}, config,
			"quicmesh ca intermediate: --root-dir " + filepath.Join(dir, "ca") + ": identity: CA \"quicmesh CA test.local\" has path length 0: it may sign leaves only"},
		{"ca intermediate missing root", []string{"ca", "intermediate", "--root-dir", filepath.Join(dir, "nope"), "--out", filepath.Join(dir, "i")}, config, "quicmesh ca intermediate: --root-dir: identity: reading CA certificate"},
		{"ca issue -h", []string{"ca", "issue", "-h"}, help, "-id string"},
		{"ca issue missing value", []string{"ca", "issue", "--id"}, usage, "quicmesh ca issue: flag needs a value: --id"},
		{"ca issue no id", []string{"ca", "issue", "--ca-dir", filepath.Join(dir, "ca")}, config, "quicmesh ca issue: --id is required"},
		{"ca issue bad id", []string{"ca", "issue", "--ca-dir", filepath.Join(dir, "ca"), "--id", "http://x"}, config, "quicmesh ca issue: --id: "},
		{"ca issue missing CA", []string{"ca", "issue", "--ca-dir", filepath.Join(dir, "nope"), "--id", "spiffe://test.local/a"}, config, "quicmesh ca issue: --ca-dir: "},
	}
	for _, tt := range tests {
		clitest.Check(t, run, tt.name, tt.args, tt.code, tt.want)
	}
}

// nxdomainServer is a DNS server on loopback (UDP) that knows no name.
func nxdomainServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeNameError)
			w.WriteMsg(m)
		})}
	done := make(chan struct{})
	go func() { srv.ActivateAndServe(); close(done) }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return pc.LocalAddr().String()
}
