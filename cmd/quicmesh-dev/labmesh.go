package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/intercept"
)

// The lab's mesh: one CA for the cluster, a sidecar (`quicmesh proxy`,
// transparent) in every pod running as the proxy UID that quicmesh init
// excluded, and a static discovery file with every pod as a service:
// service P.default (DNS name P.default.svc.DOMAIN) has a virtual IP and
// the echo apps' ports, its one endpoint is pod P's sidecar.

// Lab mesh defaults.
const (
	labTrustDomain   = "cluster.local"
	labNamespace     = "default"
	labServiceSubnet = "10.96.0.0/24"
	// labHTTPPort is the service port that maps to the http1 app's
	// port: an app dialling http://P.default.svc.DOMAIN/ means it.
	labHTTPPort = 80
)

// labMesh configures the sidecars.
type labMesh struct {
	quicmesh string // the sidecar binary
	proxyUID uint32
	policy   string // plain TCP: permissive or strict
	// strict lists pods whose sidecars refuse plain TCP whatever policy
	// says (tests compare the two policies in one lab).
	strict []string
	// serviceSubnet holds the services' virtual IPs (only the pods'
	// rules know them, as kube-proxy's would).
	serviceSubnet string
}

// labService is one pod's service as the lab names it.
type labService struct {
	Pod  string `json:"pod"`
	Name string `json:"name"` // P.default
	DNS  string `json:"dns"`  // P.default.svc.DOMAIN
	VIP  string `json:"vip"`
	ID   string `json:"identity"`
}

// labServices names every pod's service and gives it a virtual IP, the
// subnet's addresses from .10 on.
func labServices(pods []string, domain, subnet string) ([]labService, map[string]netip.Addr, error) {
	pfx, err := netip.ParsePrefix(subnet)
	if err != nil || !pfx.Addr().Is4() {
		return nil, nil, fmt.Errorf("service subnet %q: want an IPv4 prefix", subnet)
	}
	addr := pfx.Masked().Addr()
	for range 10 {
		addr = addr.Next()
	}
	var svcs []labService
	hosts := map[string]netip.Addr{}
	for _, p := range pods {
		if !pfx.Contains(addr) {
			return nil, nil, fmt.Errorf("service subnet %s: too small for %d services", subnet, len(pods))
		}
		s := labService{Pod: p, Name: p + "." + labNamespace, DNS: p + "." + labNamespace + ".svc." + domain, VIP: addr.String(),
			ID: "spiffe://" + labTrustDomain + "/ns/" + labNamespace + "/sa/" + p}
		svcs = append(svcs, s)
		hosts[s.DNS] = addr
		addr = addr.Next()
	}
	return svcs, hosts, nil
}

// labAppPorts are the echo apps' ports: each service's ports, each
// endpoint's.
func labAppPorts() []uint16 {
	var ports []uint16
	for _, a := range labEchoApps {
		ports = append(ports, uint16(a.port))
		if a.second != 0 {
			ports = append(ports, uint16(a.second))
		}
	}
	return ports
}

// labCatalog is the static discovery file's content.
func labCatalog(cl *cluster.Cluster, svcs []labService) ([]byte, error) {
	// The file format of discovery/static.
	type (
		port struct {
			Name       string `json:"name,omitempty"`
			Port       uint16 `json:"port"`
			TargetPort uint16 `json:"target_port,omitempty"`
		}
		endpoint struct {
			Addr     string   `json:"addr"`
			Identity string   `json:"identity"`
			PodIP    string   `json:"pod_ip"`
			Ports    []uint16 `json:"ports"`
		}
		service struct {
			VirtualIPs []string   `json:"virtual_ips"`
			Ports      []port     `json:"ports"`
			Endpoints  []endpoint `json:"endpoints"`
		}
		file struct {
			Services map[string]service `json:"services"`
		}
	)
	f := file{Services: map[string]service{}}
	ports := []port{{Name: "http", Port: labHTTPPort, TargetPort: uint16(labEchoApps[0].port)}}
	for _, a := range labEchoApps {
		ports = append(ports, port{Name: a.proto, Port: uint16(a.port)})
		if a.second != 0 {
			ports = append(ports, port{Name: a.proto + "-2", Port: uint16(a.second)})
		}
	}
	for _, s := range svcs {
		pod := cl.Pod(s.Pod)
		f.Services[s.Name] = service{
			VirtualIPs: []string{s.VIP},
			Ports:      ports,
			Endpoints: []endpoint{{
				Addr:     net.JoinHostPort(pod.Addr.String(), strconv.Itoa(intercept.DefaultMeshPort)),
				Identity: s.ID,
				PodIP:    pod.Addr.String(),
				Ports:    labAppPorts(),
			}},
		}
	}
	return json.MarshalIndent(f, "", "  ")
}

// startLabSidecars writes the CA, the certificates and the discovery
// file, starts a sidecar in every pod and waits until each is ready.
func startLabSidecars(cl *cluster.Cluster, st *labState, m labMesh, svcs []labService, ready time.Duration) error {
	bin, err := cl.Share(m.quicmesh)
	if err != nil {
		return err
	}
	ca, err := identity.NewCA(labTrustDomain, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("lab: CA: %w", err)
	}
	pki := filepath.Join(cl.Dir(), "pki")
	if err := os.MkdirAll(pki, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	bundle := filepath.Join(pki, "ca.crt")
	if err := os.WriteFile(bundle, ca.BundlePEM(), 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	catalog, err := labCatalog(cl, svcs)
	if err != nil {
		return err
	}
	discoveryFile := filepath.Join(cl.Dir(), "discovery.json")
	if err := os.WriteFile(discoveryFile, catalog, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	var ports []string
	for _, p := range labAppPorts() {
		ports = append(ports, strconv.Itoa(int(p)))
	}
	for _, s := range svcs {
		pod := cl.Pod(s.Pod)
		id, err := identity.ParseID(s.ID)
		if err != nil {
			return err
		}
		certPEM, keyPEM, err := ca.IssuePEM(id, 24*time.Hour)
		if err != nil {
			return fmt.Errorf("lab: pod %s: certificate: %w", s.Pod, err)
		}
		cert, key := filepath.Join(pki, s.Pod+".crt"), filepath.Join(pki, s.Pod+".key")
		if err := os.WriteFile(cert, certPEM, 0o644); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		// Only the sidecar's user reads its key.
		if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		if err := os.Chown(key, int(m.proxyUID), int(m.proxyUID)); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
		proc, err := cl.Start(pod, m.proxyUID, "sidecar", bin, "proxy",
			"--cert", cert, "--key", key, "--bundle", bundle,
			"--discovery-file", discoveryFile,
			"--inbound", "0.0.0.0:"+strconv.Itoa(intercept.DefaultMeshPort),
			"--admin", "127.0.0.1:"+strconv.Itoa(intercept.DefaultAdminPort),
			"--http-proxy", "",
			"--transparent", "127.0.0.1:"+strconv.Itoa(intercept.DefaultOutboundPort),
			"--plain-inbound", "0.0.0.0:"+strconv.Itoa(intercept.DefaultInboundPort),
			"--plain-policy", m.podPolicy(s.Pod),
			"--app-ports", strings.Join(ports, ","),
			"--app-host", pod.Addr.String(),
			"--grace", "2s",
		)
		if err != nil {
			return err
		}
		if err := waitReady(cl, pod, proc, ready); err != nil {
			return err
		}
		st.Processes = append(st.Processes, labProcT{Pod: pod.Name, Label: proc.Label, Pid: proc.Pid(), UID: proc.UID, Log: proc.Log})
	}
	st.Sidecars, st.Services, st.Policy = true, svcs, m.policy
	return nil
}

// podPolicy is the plain TCP policy of pod's sidecar.
func (m labMesh) podPolicy(pod string) string {
	if slices.Contains(m.strict, pod) {
		return "strict"
	}
	return m.policy
}

// waitReady waits until the sidecar in pod answers /ready with 200.
func waitReady(cl *cluster.Cluster, pod *cluster.Pod, proc *cluster.Process, timeout time.Duration) error {
	url := "http://127.0.0.1:" + strconv.Itoa(intercept.DefaultAdminPort) + "/ready"
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last error
	for {
		last = cl.Do(pod, func() error {
			_, err := adminGet(url)
			return err
		})
		if last == nil {
			return nil
		}
		select {
		case <-proc.Done():
			return fmt.Errorf("lab: pod %s: the sidecar exited (%v): %s", pod.Name, proc.Err(), proc.LogTail(2048))
		case <-deadline.C:
			return fmt.Errorf("lab: pod %s: sidecar not ready after %v: %w; log: %s", pod.Name, timeout, last, proc.LogTail(2048))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// adminGet fetches url from a sidecar's admin server in the calling
// thread's namespace: the body of a 200, else an error. The connection is
// dialled here, on the thread cluster.Do moved into the pod: a
// transport's own dial would run on another goroutine, in another
// namespace.
func adminGet(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", req.URL.Host)
	if err != nil {
		return "", err
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), nil
}

// findQuicmesh finds the sidecar binary: path if given, else quicmesh
// next to this executable, else on $PATH.
func findQuicmesh(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "quicmesh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("quicmesh")
	if err != nil {
		return "", errors.New("no quicmesh binary next to quicmesh-dev or on $PATH: 'make build', or --quicmesh PATH")
	}
	return p, nil
}

// labSpec is what buildLab builds.
type labSpec struct {
	prefix           string
	pods             []string
	subnet, domain   string
	appUID, proxyUID uint32
	intercept        bool
	mesh             *labMesh // nil: no sidecars
	ready            time.Duration
	stopGrace        time.Duration
}

// buildLab brings a lab up: the cluster, the echo apps in every pod and,
// with spec.mesh, quicmesh init's rules and a sidecar in every pod. On
// error it has torn down what it built.
func buildLab(spec labSpec) (_ *cluster.Cluster, _ *labState, err error) {
	cfg := cluster.Config{Prefix: spec.prefix, Pods: spec.pods, Subnet: spec.subnet, Domain: spec.domain, StopGrace: spec.stopGrace}
	if cfg.Domain == "" {
		cfg.Domain = cluster.DefaultDomain
	}
	var svcs []labService
	if spec.mesh != nil {
		spec.intercept = true
		if svcs, cfg.Hosts, err = labServices(spec.pods, cfg.Domain, spec.mesh.serviceSubnet); err != nil {
			return nil, nil, err
		}
	}
	if spec.intercept {
		cfg.Intercept = &intercept.Config{ProxyUID: spec.proxyUID, OutboundPort: intercept.DefaultOutboundPort,
			InboundPort: intercept.DefaultInboundPort, AdminPort: intercept.DefaultAdminPort, MeshPort: intercept.DefaultMeshPort}
	}
	cl, err := cluster.Up(cfg)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			cl.Close()
		}
	}()
	st, err := startLabApps(cl, spec.appUID, spec.ready)
	if err != nil {
		return nil, nil, err
	}
	st.Intercept = spec.intercept
	if spec.mesh != nil {
		if err := startLabSidecars(cl, st, *spec.mesh, svcs, spec.ready); err != nil {
			return nil, nil, err
		}
	}
	return cl, st, nil
}

// labMeshFlagSet holds the flags of the lab's sidecars.
type labMeshFlagSet struct {
	sidecars      *bool
	quicmesh      *string
	policy        *string
	serviceSubnet *string
}

func labMeshFlags(c *cli.Command) *labMeshFlagSet {
	return &labMeshFlagSet{
		sidecars:      c.Flags.Bool("sidecars", false, "run a transparent sidecar in every pod (implies --intercept)"),
		quicmesh:      c.Flags.String("quicmesh", "", "the sidecar binary (default: quicmesh next to this executable, else on $PATH)"),
		policy:        c.Flags.String("plain-policy", "permissive", "the sidecars' policy for plain TCP from outside the mesh: permissive or strict"),
		serviceSubnet: c.Flags.String("service-subnet", labServiceSubnet, "the services' virtual IPs (known only to the pods' sidecars)"),
	}
}

// mesh is the sidecars' configuration, nil without --sidecars.
func (f *labMeshFlagSet) mesh(proxyUID uint32) (*labMesh, error) {
	if !*f.sidecars {
		return nil, nil
	}
	if *f.policy != "permissive" && *f.policy != "strict" {
		return nil, fmt.Errorf("--plain-policy %q: want permissive or strict", *f.policy)
	}
	bin, err := findQuicmesh(*f.quicmesh)
	if err != nil {
		return nil, fmt.Errorf("--quicmesh: %w", err)
	}
	return &labMesh{quicmesh: bin, proxyUID: proxyUID, policy: *f.policy, serviceSubnet: *f.serviceSubnet}, nil
}
