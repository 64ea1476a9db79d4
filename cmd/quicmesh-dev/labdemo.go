package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/intercept"
)

// labCallSpec is one call a client in a pod makes: with curl or with
// 'lab call' (net/http, x/net/http2, grpc-go, raw TCP).
type labCallSpec struct {
	proto  string // http1, h2c, grpc, tcp, or curl
	target string // HOST:PORT
}

// labCallResult is a call and what it printed.
type labCallResult struct {
	labCallSpec
	callResult
	output string
}

// labCall runs one call from pod as uid (an app's user: its traffic is
// intercepted) with the pod's /etc/hosts, with no proxy configuration.
func labCall(cl *cluster.Cluster, pod *cluster.Pod, uid uint32, self string, env []string, spec labCallSpec) labCallResult {
	res := labCallResult{labCallSpec: spec}
	var args []string
	name := self
	if spec.proto == "curl" {
		name = "curl"
		args = []string{"--silent", "--show-error", "--noproxy", "*", "--max-time", "10", "--dump-header", "-", "--output", "/dev/null", "http://" + spec.target + "/"}
	} else {
		args = []string{"lab", "call", "--proto", spec.proto, "--target", spec.target}
	}
	cmd := cl.Command(pod, uid, name, args...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...) // no *_proxy variables
	out, err := cmd.CombinedOutput()
	res.output = string(out)
	res.Proto, res.Target = spec.proto, spec.target
	if spec.proto == "curl" {
		res.OK = err == nil && strings.HasPrefix(res.output, "HTTP/1.1 200")
		sc := bufio.NewScanner(strings.NewReader(res.output))
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			switch strings.ToLower(k) {
			case "echo-local-addr":
				res.ServerAddr = strings.TrimSpace(v)
			case "echo-peer-identity":
				res.PeerIdentity = strings.TrimSpace(v)
			}
		}
		if !res.OK {
			res.Error = fmt.Sprintf("curl: %v: %s", err, strings.TrimSpace(res.output))
		}
		return res
	}
	line := strings.TrimSpace(res.output)
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if jerr := json.Unmarshal([]byte(line), &res.callResult); jerr != nil {
		res.OK, res.Error = false, fmt.Sprintf("lab call: %v: %s", err, strings.TrimSpace(res.output))
	}
	return res
}

// podOf names the pod whose address addr (IP:port) is, or "?".
func podOf(st *labState, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "?"
	}
	for _, p := range st.Pods {
		if p.Addr == host {
			return p.Name
		}
	}
	return "?"
}

// quicConnections is the number of open QUIC connections the sidecar in
// pod reports on its admin metrics (both directions).
func quicConnections(cl *cluster.Cluster, pod *cluster.Pod) (int, error) {
	var body string
	err := cl.Do(pod, func() error {
		var err error
		body, err = adminGet("http://127.0.0.1:" + strconv.Itoa(intercept.DefaultAdminPort) + "/metrics")
		return err
	})
	if err != nil {
		return 0, err
	}
	return sumMetric(body, "quicmesh_quic_connections_open", `direction="outbound"`), nil
}

// sumMetric adds up the samples of metric in a Prometheus text body that
// have every label of match (each `name="value"`).
func sumMetric(body, metric string, match ...string) int {
	total := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		if !all(match, func(m string) bool { return strings.Contains(line, m) }) {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
		}
	}
	return int(total)
}

// labDemoCalls are the demo's calls from pod a: by DNS name, by virtual
// IP, by pod IP; curl, net/http, h2c, gRPC and raw TCP.
func labDemoCalls(st *labState) []labCallSpec {
	svc := map[string]labService{}
	for _, s := range st.Services {
		svc[s.Pod] = s
	}
	addr := map[string]string{}
	for _, p := range st.Pods {
		addr[p.Name] = p.Addr
	}
	return []labCallSpec{
		{"curl", svc["b"].DNS},
		{"http1", svc["b"].DNS + ":" + strconv.Itoa(labHTTPPort)},
		{"h2c", svc["c"].VIP + ":8081"},
		{"grpc", svc["c"].DNS + ":9090"},
		{"tcp", svc["d"].DNS + ":7000"},
		{"http1", addr["d"] + ":8080"},
		{"grpc", addr["b"] + ":9090"},
	}
}

func runLabDemo(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev lab demo", `Usage: quicmesh-dev lab demo [flags]

Brings up a lab of 4 pods (a, b, c, d) with sidecars, then from pod a
runs curl, a net/http client, an h2c client, a gRPC client and a raw TCP
client against the services and pods of the others, with no proxy
configuration in any of them; prints who answered, on which port, and
the SPIFFE ID the server's sidecar saw; tears the lab down. Needs root,
iproute2, iptables, setpriv and curl.
`, stdout, stderr)
	subnet := c.Flags.String("subnet", "10.88.9.0/24", "the pods' IPv4 subnet")
	appUID := c.Flags.Uint("app-uid", 2001, "UID the apps (and the clients) run as")
	proxyUID := c.Flags.Uint("proxy-uid", 2002, "UID the sidecars run as")
	quicmesh := c.Flags.String("quicmesh", "", "the sidecar binary (default: quicmesh next to this executable, else on $PATH)")
	ready := c.Flags.Duration("ready-timeout", 30*time.Second, "how long each app and sidecar may take to be ready")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	bin, err := findQuicmesh(*quicmesh)
	if err != nil {
		return c.Fail("--quicmesh: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		return c.Fail("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintln(stdout, "bringing up 4 pods (a, b, c, d), each with echo apps, quicmesh init's rules and a sidecar ...")
	cl, st, err := buildLab(labSpec{prefix: "demo", pods: []string{"a", "b", "c", "d"}, subnet: *subnet,
		appUID: uint32(*appUID), proxyUID: uint32(*proxyUID), ready: *ready,
		mesh: &labMesh{quicmesh: bin, proxyUID: uint32(*proxyUID), policy: "permissive", serviceSubnet: labServiceSubnet}})
	if err != nil {
		return c.Fail("%v", err)
	}
	defer cl.Close()
	printState(stdout, st)
	shared, err := cl.Share(self)
	if err != nil {
		return c.Fail("%v", err)
	}
	fmt.Fprintln(stdout, "\nfrom pod a, no proxy settings anywhere:")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tTARGET\tANSWERED BY\tAT\tSPIFFE ID THE SERVER SAW")
	failed := 0
	for _, spec := range labDemoCalls(st) {
		if ctx.Err() != nil {
			break
		}
		r := labCall(cl, cl.Pod("a"), uint32(*appUID), shared, nil, spec)
		who, at, id := podOf(st, r.ServerAddr), r.ServerAddr, r.PeerIdentity
		if spec.proto == "tcp" {
			who, at, id = "(echoed)", "-", "(TCP carries no identity to the app)"
		}
		if !r.OK {
			failed++
			who, at, id = "FAILED", "-", r.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", spec.proto, spec.target, who, at, id)
	}
	tw.Flush()
	if n, err := quicConnections(cl, cl.Pod("a")); err == nil {
		fmt.Fprintf(stdout, "pod a's sidecar: %d outbound QUIC connections open (mTLS to b, c, d)\n", n)
	}
	fmt.Fprintln(stdout, "tearing down ...")
	if err := cl.Close(); err != nil {
		return c.Fail("tearing down: %v", err)
	}
	fmt.Fprintln(stdout, "lab down: namespaces, links, rules and processes removed")
	if failed > 0 {
		return c.Fail("%d of %d calls failed", failed, len(labDemoCalls(st)))
	}
	return cli.ExitOK
}

func all[T any](s []T, f func(T) bool) bool {
	for _, v := range s {
		if !f(v) {
			return false
		}
	}
	return true
}
