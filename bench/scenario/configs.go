package scenario

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// PeerHost is the host name in the peer server certificate's DNS SAN. The
// client side of every peer pair sends it as SNI and checks it (Caddy
// requires SNI = Host when it asks for client certificates, and sends no
// SNI to an IP address).
const PeerHost = "peer.test"

// PeerCerts are the PEM files of the peer pairs' private CA. The server
// certificate names PeerHost; both certificates allow client and server
// authentication.
type PeerCerts struct {
	CA         string // CA certificate
	ServerCert string
	ServerKey  string
	ServerPEM  string // certificate followed by key (haproxy)
	ClientCert string
	ClientKey  string
	ClientPEM  string
}

// Pair places one sidecar pair: the outbound side (A) listens on Front for
// the load generator and connects to Peer, where the inbound side (B)
// listens and forwards to App. App is "http1", "grpc" or "tcp".
type Pair struct {
	Front   string // host:port of A's listener (TCP)
	Peer    string // host:port of B's listener (TCP and/or UDP)
	AppAddr string // host:port of the echo app, as B reaches it
	App     string
}

// CaddyOutbound is the Caddyfile of the outbound Caddy: plain HTTP/1.1
// (and h2c, for gRPC) in, HTTP/3 with a client certificate out.
func CaddyOutbound(p Pair, c PeerCerts) string {
	host, _, _ := net.SplitHostPort(p.Front)
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n")
	b.WriteString("\tservers {\n\t\tprotocols h1 h2c\n\t}\n}\n\n")
	fmt.Fprintf(&b, "http://%s {\n\tbind %s\n", p.Front, host)
	fmt.Fprintf(&b, "\treverse_proxy https://%s {\n", p.Peer)
	fmt.Fprintf(&b, "\t\theader_up Host %s\n", PeerHost)
	b.WriteString("\t\ttransport http {\n\t\t\tversions 3\n")
	fmt.Fprintf(&b, "\t\t\ttls_client_auth %s %s\n", c.ClientCert, c.ClientKey)
	fmt.Fprintf(&b, "\t\t\ttls_trust_pool file %s\n", c.CA)
	fmt.Fprintf(&b, "\t\t\ttls_server_name %s\n", PeerHost)
	b.WriteString("\t\t}\n\t}\n}\n")
	return b.String()
}

// CaddyInbound is the Caddyfile of the inbound Caddy: HTTP/3 (and h1/h2)
// with a required client certificate in, the app out. Its access log
// shows the protocol of every request ("proto":"HTTP/3.0").
func CaddyInbound(p Pair, c PeerCerts, accessLog string) string {
	host, port, _ := net.SplitHostPort(p.Peer)
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n")
	b.WriteString("\tservers {\n\t\tprotocols h1 h2 h3\n\t}\n}\n\n")
	fmt.Fprintf(&b, "https://%s:%s {\n\tbind %s\n", PeerHost, port, host)
	fmt.Fprintf(&b, "\ttls %s %s {\n\t\tclient_auth {\n\t\t\tmode require_and_verify\n", c.ServerCert, c.ServerKey)
	fmt.Fprintf(&b, "\t\t\ttrust_pool file %s\n\t\t}\n\t}\n", c.CA)
	if accessLog != "" {
		fmt.Fprintf(&b, "\tlog {\n\t\toutput file %s\n\t}\n", accessLog)
	}
	if p.App == "grpc" {
		fmt.Fprintf(&b, "\treverse_proxy h2c://%s\n", p.AppAddr)
	} else {
		fmt.Fprintf(&b, "\treverse_proxy %s\n", p.AppAddr)
	}
	b.WriteString("}\n")
	return b.String()
}

const haproxyHead = `global
	maxconn 4096

defaults
	mode %s
	timeout connect 5s
	timeout client 60s
	timeout server 60s
`

// HAProxyOutbound is the outbound haproxy's configuration. HTTP apps: HTTP
// mode, HTTP/1.1 or h2c (gRPC) in, HTTP/2 over mTLS out with connection
// reuse. TCP: TCP mode, TLS with a client certificate out.
func HAProxyOutbound(p Pair, c PeerCerts) string {
	var b strings.Builder
	if p.App == "tcp" {
		fmt.Fprintf(&b, haproxyHead, "tcp")
		fmt.Fprintf(&b, "\nfrontend front\n\tbind %s\n\tdefault_backend peer\n", p.Front)
		fmt.Fprintf(&b, "\nbackend peer\n\tserver b %s ssl crt %s ca-file %s verify required verifyhost %s sni str(%s)\n",
			p.Peer, c.ClientPEM, c.CA, PeerHost, PeerHost)
		return b.String()
	}
	fmt.Fprintf(&b, haproxyHead, "http")
	b.WriteString("\thttp-reuse always\n")
	proto := ""
	if p.App == "grpc" {
		proto = " proto h2"
	}
	fmt.Fprintf(&b, "\nfrontend front\n\tbind %s%s\n\tdefault_backend peer\n", p.Front, proto)
	fmt.Fprintf(&b, "\nbackend peer\n\tserver b %s ssl crt %s ca-file %s verify required verifyhost %s sni str(%s) alpn h2\n",
		p.Peer, c.ClientPEM, c.CA, PeerHost, PeerHost)
	return b.String()
}

// HAProxyInbound is the inbound haproxy's configuration: mTLS in (HTTP/2
// for HTTP apps), the app out (h2c for gRPC).
func HAProxyInbound(p Pair, c PeerCerts) string {
	var b strings.Builder
	if p.App == "tcp" {
		fmt.Fprintf(&b, haproxyHead, "tcp")
		fmt.Fprintf(&b, "\nfrontend peer\n\tbind %s ssl crt %s ca-file %s verify required\n\tdefault_backend app\n",
			p.Peer, c.ServerPEM, c.CA)
		fmt.Fprintf(&b, "\nbackend app\n\tserver app %s\n", p.AppAddr)
		return b.String()
	}
	fmt.Fprintf(&b, haproxyHead, "http")
	fmt.Fprintf(&b, "\nfrontend peer\n\tbind %s ssl crt %s ca-file %s verify required alpn h2,http/1.1\n\tdefault_backend app\n",
		p.Peer, c.ServerPEM, c.CA)
	proto := ""
	if p.App == "grpc" {
		proto = " proto h2"
	}
	fmt.Fprintf(&b, "\nbackend app\n\tserver app %s%s\n", p.AppAddr, proto)
	return b.String()
}

const stunnelHead = `foreground = yes
pid =
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[pair]
`

// StunnelOutbound is the outbound stunnel's configuration: TCP in, TLS
// with a client certificate out, the server's chain and name checked.
func StunnelOutbound(p Pair, c PeerCerts) string {
	var b strings.Builder
	b.WriteString(stunnelHead)
	fmt.Fprintf(&b, "client = yes\naccept = %s\nconnect = %s\n", p.Front, p.Peer)
	fmt.Fprintf(&b, "cert = %s\nkey = %s\nCAfile = %s\n", c.ClientCert, c.ClientKey, c.CA)
	fmt.Fprintf(&b, "verifyChain = yes\ncheckHost = %s\nsni = %s\n", PeerHost, PeerHost)
	return b.String()
}

// StunnelInbound is the inbound stunnel's configuration: TLS with a
// required, verified client certificate in, the app out.
func StunnelInbound(p Pair, c PeerCerts) string {
	var b strings.Builder
	b.WriteString(stunnelHead)
	fmt.Fprintf(&b, "accept = %s\nconnect = %s\n", p.Peer, p.AppAddr)
	fmt.Fprintf(&b, "cert = %s\nkey = %s\nCAfile = %s\n", c.ServerCert, c.ServerKey, c.CA)
	b.WriteString("verifyChain = yes\nrequireCert = yes\n")
	return b.String()
}

// Endpoint is one entry of quicmesh's static discovery file.
type Endpoint struct {
	Addr     string `json:"addr"`
	Identity string `json:"identity"`
}

// DiscoveryJSON renders quicmesh's static discovery file: each service
// served by the given endpoint.
func DiscoveryJSON(services map[string]Endpoint) ([]byte, error) {
	type svc struct {
		Endpoints []Endpoint `json:"endpoints"`
	}
	out := struct {
		Services map[string]svc `json:"services"`
	}{Services: map[string]svc{}}
	for name, ep := range services {
		out.Services[name] = svc{Endpoints: []Endpoint{ep}}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// QuicmeshService is the service name under which the quicmesh pair
// serves the echo app of that kind.
func QuicmeshService(app string) string { return "echo-" + app }

// quicmeshCommonArgs are the "quicmesh proxy" arguments both sidecars of
// a pair share. transport is the --transport mode ("" = the default,
// auto). The log level is warn: a sidecar that switches a peer between
// QUIC and TCP logs it at that level, and the logs (bench/out/work/logs)
// are how a reader checks which transport a row really measured; nothing
// is logged at warn per request unless requests fail.
func quicmeshCommonArgs(id, inbound, transport string) []string {
	a := []string{"proxy",
		"--cert", id + ".crt", "--key", id + ".key", "--bundle", bundleOf(id),
		"--inbound", inbound, "--admin", "", "--http-proxy", "", "--grace", "1s", "--log-level", "warn"}
	if transport != "" {
		a = append(a, "--transport", transport)
	}
	return a
}

// QuicmeshInboundArgs are the "quicmesh proxy" arguments of the inbound
// sidecar (B) serving apps (kind -> app address) on the address inbound
// (UDP, TCP or both, by transport: see quicmeshCommonArgs).
func QuicmeshInboundArgs(id, inbound, transport string, apps map[string]string) []string {
	a := quicmeshCommonArgs(id, inbound, transport)
	for _, kind := range []string{"http1", "grpc", "tcp"} {
		if addr, ok := apps[kind]; ok {
			if kind == "tcp" {
				// Declared opaque: on a bare route the inbound side
				// detects, and the echo payload ("xxx...", then a wait
				// for the echo) is an unfinished first word to it.
				addr = "tcp://" + addr
			}
			a = append(a, "--route", QuicmeshService(kind)+"="+addr)
		}
	}
	return a
}

// QuicmeshOutboundArgs are the "quicmesh proxy" arguments of the outbound
// sidecar (A) on mesh transport transport: one listener per app kind
// (kind -> listen address), reaching B through the discovery file. TCP
// listeners are opaque (no protocol detection).
func QuicmeshOutboundArgs(id, inbound, transport, discovery string, fronts map[string]string) []string {
	a := append(quicmeshCommonArgs(id, inbound, transport), "--discovery-file", discovery)
	for _, kind := range []string{"http1", "grpc", "tcp"} {
		if addr, ok := fronts[kind]; ok {
			v := addr + "=" + QuicmeshService(kind)
			if kind == "tcp" {
				v += ",opaque"
			}
			a = append(a, "--bind", v)
		}
	}
	return a
}

// bundleOf returns the bundle written by "quicmesh ca issue --out DIR
// --name NAME" for the certificate stem DIR/NAME.
func bundleOf(stem string) string {
	if i := strings.LastIndexByte(stem, '/'); i >= 0 {
		return stem[:i+1] + "bundle.crt"
	}
	return "bundle.crt"
}
