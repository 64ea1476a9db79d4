package scenario

import (
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery/static"
)

var testCerts = PeerCerts{CA: "/c/ca.crt", ServerCert: "/c/server.crt", ServerKey: "/c/server.key", ServerPEM: "/c/server.pem",
	ClientCert: "/c/client.crt", ClientKey: "/c/client.key", ClientPEM: "/c/client.pem"}

func mustContain(t *testing.T, name, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", name, w, text)
		}
	}
}

func mustNotContain(t *testing.T, name, text string, nots ...string) {
	t.Helper()
	for _, w := range nots {
		if strings.Contains(text, w) {
			t.Errorf("%s contains %q:\n%s", name, w, text)
		}
	}
}

func TestCaddyConfigs(t *testing.T) {
	p := Pair{Front: "127.0.0.1:7000", Peer: "10.77.90.2:7100", AppAddr: "127.0.0.1:8000", App: "http1"}
	a := CaddyOutbound(p, testCerts)
	mustContain(t, "outbound Caddyfile", a,
		"admin off", "auto_https off", "protocols h1 h2c",
		"http://127.0.0.1:7000 {", "bind 127.0.0.1\n",
		"reverse_proxy https://10.77.90.2:7100 {", "header_up Host peer.test",
		"versions 3\n", "tls_client_auth /c/client.crt /c/client.key", "tls_trust_pool file /c/ca.crt", "tls_server_name peer.test")
	// "versions 3" must be the only version: with h2 also listed Caddy
	// would not use HTTP/3 alone.
	mustNotContain(t, "outbound Caddyfile", a, "versions 3 ", "versions 2", "versions h2")

	b := CaddyInbound(p, testCerts, "/log/access.log")
	// A site named by IP would answer 421: it must be the SNI host name.
	mustContain(t, "inbound Caddyfile", b,
		"protocols h1 h2 h3", "https://peer.test:7100 {", "bind 10.77.90.2\n",
		"tls /c/server.crt /c/server.key {", "mode require_and_verify", "trust_pool file /c/ca.crt",
		"output file /log/access.log", "reverse_proxy 127.0.0.1:8000\n")
	mustNotContain(t, "inbound Caddyfile", b, "https://10.77.90.2")

	p.App = "grpc"
	mustContain(t, "inbound Caddyfile for gRPC", CaddyInbound(p, testCerts, ""), "reverse_proxy h2c://127.0.0.1:8000")
	mustNotContain(t, "inbound Caddyfile without log", CaddyInbound(p, testCerts, ""), "log {")
	if strings.Count(a, "{") != strings.Count(a, "}") || strings.Count(b, "{") != strings.Count(b, "}") {
		t.Error("unbalanced braces")
	}
}

func TestHAProxyConfigs(t *testing.T) {
	p := Pair{Front: "127.0.0.1:7000", Peer: "127.0.0.1:7100", AppAddr: "127.0.0.1:8000", App: "http1"}
	a := HAProxyOutbound(p, testCerts)
	mustContain(t, "outbound haproxy", a, "mode http", "http-reuse always", "bind 127.0.0.1:7000\n",
		"server b 127.0.0.1:7100 ssl crt /c/client.pem ca-file /c/ca.crt verify required verifyhost peer.test sni str(peer.test) alpn h2\n")
	b := HAProxyInbound(p, testCerts)
	mustContain(t, "inbound haproxy", b, "bind 127.0.0.1:7100 ssl crt /c/server.pem ca-file /c/ca.crt verify required alpn h2,http/1.1",
		"server app 127.0.0.1:8000\n")

	p.App = "grpc"
	mustContain(t, "outbound haproxy for gRPC", HAProxyOutbound(p, testCerts), "bind 127.0.0.1:7000 proto h2")
	mustContain(t, "inbound haproxy for gRPC", HAProxyInbound(p, testCerts), "server app 127.0.0.1:8000 proto h2")

	p.App = "tcp"
	a, b = HAProxyOutbound(p, testCerts), HAProxyInbound(p, testCerts)
	mustContain(t, "outbound haproxy for TCP", a, "mode tcp", "verify required verifyhost peer.test sni str(peer.test)")
	mustContain(t, "inbound haproxy for TCP", b, "mode tcp", "ssl crt /c/server.pem ca-file /c/ca.crt verify required")
	mustNotContain(t, "haproxy for TCP", a+b, "mode http", "alpn", "proto h2")
}

func TestStunnelConfigs(t *testing.T) {
	p := Pair{Front: "127.0.0.1:7000", Peer: "127.0.0.1:7100", AppAddr: "127.0.0.1:8000", App: "tcp"}
	a := StunnelOutbound(p, testCerts)
	mustContain(t, "outbound stunnel", a, "foreground = yes", "client = yes", "accept = 127.0.0.1:7000", "connect = 127.0.0.1:7100",
		"cert = /c/client.crt", "key = /c/client.key", "CAfile = /c/ca.crt", "verifyChain = yes", "checkHost = peer.test", "sni = peer.test")
	b := StunnelInbound(p, testCerts)
	mustContain(t, "inbound stunnel", b, "foreground = yes", "accept = 127.0.0.1:7100", "connect = 127.0.0.1:8000",
		"cert = /c/server.crt", "verifyChain = yes", "requireCert = yes")
	mustNotContain(t, "inbound stunnel", b, "client = yes")
}

func TestDiscoveryJSON(t *testing.T) {
	data, err := DiscoveryJSON(map[string]Endpoint{
		QuicmeshService("http1"): {Addr: "127.0.0.1:4143", Identity: "spiffe://bench.local/ns/bench/sa/echo"},
		QuicmeshService("tcp"):   {Addr: "10.77.90.2:20001", Identity: "spiffe://bench.local/ns/bench/sa/echo"},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The sidecar's own strict parser must accept it.
	svcs, err := static.Parse(data)
	if err != nil {
		t.Fatalf("static.Parse: %v\n%s", err, data)
	}
	if eps := svcs["echo-tcp"]; len(eps) != 1 || eps[0].Addr != "10.77.90.2:20001" || eps[0].Identity != "spiffe://bench.local/ns/bench/sa/echo" {
		t.Errorf("echo-tcp endpoints: %+v", eps)
	}
	if len(svcs["echo-http1"]) != 1 {
		t.Errorf("services: %+v", svcs)
	}
}

func TestQuicmeshArgs(t *testing.T) {
	in := strings.Join(QuicmeshInboundArgs("/q/b/echo", "127.0.0.1:4143", "", map[string]string{"grpc": "127.0.0.1:9001", "tcp": "127.0.0.1:9002"}), " ")
	mustContain(t, "inbound args", in, "proxy --cert /q/b/echo.crt --key /q/b/echo.key --bundle /q/b/bundle.crt",
		"--inbound 127.0.0.1:4143", "--admin  --http-proxy ", "--log-level warn", "--route echo-grpc=127.0.0.1:9001", "--route echo-tcp=tcp://127.0.0.1:9002")
	out := strings.Join(QuicmeshOutboundArgs("/q/a/client", "127.0.0.1:4144", "", "/s.json", map[string]string{"http1": "127.0.0.1:7000", "tcp": "127.0.0.1:7002"}), " ")
	mustContain(t, "outbound args", out, "--cert /q/a/client.crt", "--bundle /q/a/bundle.crt", "--discovery-file /s.json",
		"--bind 127.0.0.1:7000=echo-http1 ", "--bind 127.0.0.1:7002=echo-tcp,opaque")
	// The default transport is the binary's own (auto): no flag.
	for name, args := range map[string]string{"inbound": in, "outbound": out} {
		if strings.Contains(args, "--transport") {
			t.Errorf("%s args with the default transport name one: %s", name, args)
		}
	}
	// A pinned transport reaches both sides.
	in = strings.Join(QuicmeshInboundArgs("/q/b/echo", "127.0.0.1:4143", "tcp", map[string]string{"http1": "127.0.0.1:9000"}), " ")
	out = strings.Join(QuicmeshOutboundArgs("/q/a/client", "127.0.0.1:4144", "tcp", "/s.json", map[string]string{"http1": "127.0.0.1:7000"}), " ")
	mustContain(t, "inbound args, TCP transport", in, "--transport tcp", "--route echo-http1=127.0.0.1:9000")
	mustContain(t, "outbound args, TCP transport", out, "--transport tcp", "--discovery-file /s.json")
	if bundleOf("client") != "bundle.crt" {
		t.Error("bundleOf without a directory")
	}
}
