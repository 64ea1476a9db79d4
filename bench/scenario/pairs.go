package scenario

import "fmt"

// A sidecar pair is two processes of one proxy: the outbound side (A) in
// the client's network namespace, where the load generator connects, and
// the inbound side (B) in the server's, in front of the echo app. The
// pair kinds below are everything the runner knows about each proxy;
// adding a proxy is a target name (model.go), its configuration files
// (configs.go), its binary in Options and one entry here.

// pairSetup is what a pair kind needs to configure its two sides.
type pairSetup struct {
	Pair // where A listens, where B listens, the app behind B
	// Tag names this pair's files (the load, target and condition).
	Tag string
	// Bin is the proxy's binary.
	Bin   string
	Certs PeerCerts
	Mesh  quicmeshCerts
	Work  workDir
	// ClientAddr allocates one more address on the client side's
	// link-facing IP (quicmesh's outbound sidecar has its own UDP socket).
	ClientAddr func() (string, error)
}

// pairKind is one proxy's way of running a pair.
type pairKind struct {
	// Proc names the processes: Proc-a and Proc-b.
	Proc string
	// Bin returns the proxy's binary from the options ("" = not there).
	Bin func(*Options) string
	// Missing says why the pair is skipped when Bin is empty.
	Missing string
	// HTTPOnly, if set, says why the pair cannot carry the TCP app.
	HTTPOnly string
	// Env, if set, is added to both sides' environment.
	Env func(workDir) []string
	// Sides writes the pair's configuration and returns the command lines
	// of B and A.
	Sides func(s pairSetup) (b, a []string, err error)
}

// pairKinds are the targets that run a sidecar pair (Direct runs none).
var pairKinds = map[string]pairKind{
	Quicmesh:    quicmeshKind("quicmesh", ""),
	QuicmeshTCP: quicmeshKind("quicmesh-tcp", "tcp"),
	CaddyH3:     caddyKind(""),
	HAProxyH2: {
		Proc:    "haproxy",
		Bin:     func(o *Options) string { return o.HAProxy },
		Missing: "haproxy is not installed",
		Sides: confPair("haproxy-%s-%s.cfg", HAProxyInbound, HAProxyOutbound,
			func(bin, conf string) []string { return []string{bin, "-db", "-f", conf} }),
	},
	Stunnel: {
		Proc:    "stunnel",
		Bin:     func(o *Options) string { return o.Stunnel },
		Missing: "stunnel is not installed",
		Sides: confPair("stunnel-%s-%s.conf", StunnelInbound, StunnelOutbound,
			func(bin, conf string) []string { return []string{bin, conf} }),
	},
}

// quicmeshKind is a pair of quicmesh sidecars (processes proc-a and
// proc-b) on the mesh transport mode transport ("" = the default, auto).
// Both sides get the same mode: pinned to one transport, the inbound
// side listens only on it, so a row cannot silently measure the other.
func quicmeshKind(proc, transport string) pairKind {
	return pairKind{
		Proc: proc,
		Bin:  func(o *Options) string { return o.Bin },
		Sides: func(s pairSetup) ([]string, []string, error) {
			uA, err := s.ClientAddr()
			if err != nil {
				return nil, nil, err
			}
			disco, err := DiscoveryJSON(map[string]Endpoint{QuicmeshService(s.App): {Addr: s.Peer, Identity: s.Mesh.IDB}})
			if err != nil {
				return nil, nil, err
			}
			dpath, err := s.Work.writeConf("services-"+s.Tag+".json", string(disco))
			if err != nil {
				return nil, nil, err
			}
			b := append([]string{s.Bin}, QuicmeshInboundArgs(s.Mesh.B, s.Peer, transport, map[string]string{s.App: s.AppAddr})...)
			a := append([]string{s.Bin}, QuicmeshOutboundArgs(s.Mesh.A, uA, transport, dpath, map[string]string{s.App: s.Front})...)
			return b, a, nil
		},
	}
}

// caddyKind is the Caddy HTTP/3 pair; a non-empty accessLog makes the
// inbound Caddy log every request there (the check of the pair does).
func caddyKind(accessLog string) pairKind {
	in := func(p Pair, c PeerCerts) string { return CaddyInbound(p, c, accessLog) }
	return pairKind{
		Proc:     "caddy",
		Bin:      func(o *Options) string { return o.Caddy },
		Missing:  "Caddy 2.11 is not installed",
		HTTPOnly: "Caddy's reverse proxy carries HTTP only",
		Env:      workDir.caddyEnv,
		Sides: confPair("Caddyfile-%s-%s", in, CaddyOutbound,
			func(bin, conf string) []string {
				return []string{bin, "run", "--config", conf, "--adapter", "caddyfile"}
			}),
	}
}

// confPair is the Sides of a proxy configured by one file per side:
// nameFormat (with the side, "a" or "b", and the tag) names the files,
// inbound and outbound write them, and argv runs the proxy on one.
func confPair(nameFormat string, inbound, outbound func(Pair, PeerCerts) string, argv func(bin, conf string) []string) func(pairSetup) ([]string, []string, error) {
	return func(s pairSetup) ([]string, []string, error) {
		cb, err := s.Work.writeConf(fmt.Sprintf(nameFormat, "b", s.Tag), inbound(s.Pair, s.Certs))
		if err != nil {
			return nil, nil, err
		}
		ca, err := s.Work.writeConf(fmt.Sprintf(nameFormat, "a", s.Tag), outbound(s.Pair, s.Certs))
		if err != nil {
			return nil, nil, err
		}
		return argv(s.Bin, cb), argv(s.Bin, ca), nil
	}
}
