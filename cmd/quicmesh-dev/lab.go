package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/cli"
)

const labUsage = `Usage:
  quicmesh-dev lab up [flags]       build a cluster of pods on this machine and keep it up
  quicmesh-dev lab status [--name]  show a running lab
  quicmesh-dev lab down [--name]    tear it down (also after its process died)
  quicmesh-dev lab demo [flags]     up with sidecars, call services from pod a, down
  quicmesh-dev lab call [flags]     (inside a pod) call an echo app, print what answered

Needs root, iproute2, iptables and setpriv. Each pod is a network
namespace on a bridge (in a namespace of its own: the host's network is
not touched), with its own address, the cluster's names in its
/etc/hosts and the bundled echo apps running as --app-uid. Run a command
in a pod with 'ip netns exec NAMESPACE ...' (status lists them).
`

// labEchoApps are the apps every pod runs, by port. The http1 app also
// listens on a second port (one app, two ports: the sidecars must deliver
// each connection on the port its client dialled).
var labEchoApps = []struct {
	proto        string
	port, second int
}{{"http1", 8080, 8082}, {"h2c", 8081, 0}, {"grpc", 9090, 0}, {"tcp", 7000, 0}}

func runLab(args []string, stdout, stderr io.Writer) int {
	return cli.New("quicmesh-dev lab", labUsage, stdout, stderr).Dispatch(map[string]cli.Subcommand{
		"up":     runLabUp,
		"status": runLabStatus,
		"down":   runLabDown,
		"demo":   runLabDemo,
		"call":   runLabCall,
	}, args)
}

// labState is what 'lab up' writes for status and down: the lab's
// process, and what it built.
type labState struct {
	Name      string     `json:"name"`
	Pid       int        `json:"pid"`
	ID        string     `json:"id"`
	Dir       string     `json:"dir"`
	Hub       string     `json:"hub_namespace"`
	Gateway   string     `json:"gateway"`
	Intercept bool       `json:"intercept"`
	Pods      []labPod   `json:"pods"`
	Processes []labProcT `json:"processes"`
	// Sidecars says the pods run sidecars (labmesh.go), with Services
	// and the plain TCP Policy.
	Sidecars bool         `json:"sidecars"`
	Services []labService `json:"services,omitempty"`
	Policy   string       `json:"plain_policy,omitempty"`
}

type labPod struct {
	Name  string   `json:"name"`
	NS    string   `json:"namespace"`
	Addr  string   `json:"addr"`
	Names []string `json:"names"`
}

type labProcT struct {
	Pod   string `json:"pod"`
	Label string `json:"label"`
	Pid   int    `json:"pid"`
	UID   uint32 `json:"uid"`
	Log   string `json:"log"`
}

var labNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)

func labNameFlag(c *cli.Command) *string {
	return c.Flags.String("name", "lab", "the lab's name, so that several can run side by side")
}

func statePath(name string) string { return filepath.Join(cluster.RunDir, name+".json") }

// readState returns the state of lab name, nil if it is not up.
func readState(name string) (*labState, error) {
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s labState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(name), err)
	}
	return &s, nil
}

// alive reports whether process pid exists and is not a zombie: a lab's
// apps outlive a killed lab process as orphans, and once killed they stay
// zombies until whoever inherits them reaps them.
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func runLabUp(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev lab up", `Usage: quicmesh-dev lab up [flags]

Builds the lab, prints its pods and stays in the foreground until SIGINT
or SIGTERM ('quicmesh-dev lab down' sends it), then tears everything
down. Every pod runs the echo apps as --app-uid: http1 on :8080 and
:8082 (one app, two ports), h2c on :8081, grpc on :9090, tcp on :7000.

With --sidecars every pod gets quicmesh init's rules (--proxy-uid
excluded) and a transparent sidecar ('quicmesh proxy', run as
--proxy-uid) with a certificate from the lab's one CA; pod P's apps are
service P.default, at P.default.svc.DOMAIN (a virtual IP) in every
pod's /etc/hosts. With --intercept alone the pods get the rules but no
sidecar, so their TCP to each other is refused. With neither the pods
talk directly (the baseline without sidecars).
`, stdout, stderr)
	name := labNameFlag(c)
	pods := c.Flags.String("pods", "4", "a number of pods (named a, b, c, ...) or a comma-separated list of names")
	subnet := c.Flags.String("subnet", cluster.DefaultSubnet, "the pods' IPv4 subnet; the bridge takes the first address")
	domain := c.Flags.String("domain", cluster.DefaultDomain, "the cluster's DNS domain: pod P is P.pod.DOMAIN")
	appUID := c.Flags.Uint("app-uid", 2001, "UID the apps run as")
	proxyUID := c.Flags.Uint("proxy-uid", 2002, "UID the sidecars will run as (excluded from interception)")
	withInit := c.Flags.Bool("intercept", false, "apply quicmesh init in every pod")
	ready := c.Flags.Duration("ready-timeout", 30*time.Second, "how long each app (and sidecar) may take to be ready")
	mf := labMeshFlags(c)
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if !labNameRE.MatchString(*name) {
		return c.Fail("--name %q: want a lower-case name of letters, digits and '-'", *name)
	}
	podNames, err := parsePods(*pods)
	if err != nil {
		return c.Fail("--pods %q: %v", *pods, err)
	}
	if *appUID == 0 || *appUID > 1<<31 || *proxyUID == 0 || *proxyUID > 1<<31 || *appUID == *proxyUID {
		return c.Fail("--app-uid %d, --proxy-uid %d: want two different UIDs other than 0", *appUID, *proxyUID)
	}
	if _, err := netip.ParsePrefix(*subnet); err != nil {
		return c.Fail("--subnet: %v", err)
	}
	mesh, err := mf.mesh(uint32(*proxyUID))
	if err != nil {
		return c.Fail("%v", err)
	}
	if s, err := readState(*name); err != nil {
		return c.Fail("%v", err)
	} else if s != nil && alive(s.Pid) {
		return c.Fail("lab %q is already up (process %d); 'quicmesh-dev lab down --name %s' tears it down", *name, s.Pid, *name)
	}
	// Signals are caught before anything exists, so one arriving during
	// the build still tears down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cl, st, err := buildLab(labSpec{prefix: "lab", pods: podNames, subnet: *subnet, domain: *domain,
		appUID: uint32(*appUID), proxyUID: uint32(*proxyUID), intercept: *withInit, mesh: mesh, ready: *ready})
	if err != nil {
		return c.Fail("%v", err)
	}
	defer cl.Close()
	st.Name, st.Pid = *name, os.Getpid()
	if err := writeState(st); err != nil {
		return c.Fail("%v", err)
	}
	defer os.Remove(statePath(*name))
	printState(stdout, st)
	fmt.Fprintf(stdout, "lab %q is up; 'quicmesh-dev lab down --name %s' (or SIGINT) tears it down\n", *name, *name)
	<-ctx.Done()
	stop()
	if err := cl.Close(); err != nil {
		return c.Fail("tearing down: %v", err)
	}
	fmt.Fprintf(stdout, "lab %q is down\n", *name)
	return cli.ExitOK
}

// startLabApps starts the echo apps in every pod and waits until they
// listen.
func startLabApps(cl *cluster.Cluster, appUID uint32, ready time.Duration) (*labState, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	self, err := cl.Share(exe)
	if err != nil {
		return nil, err
	}
	st := &labState{ID: cl.ID(), Dir: cl.Dir(), Hub: cl.Hub(), Gateway: cl.Gateway().String()}
	for _, p := range cl.Pods() {
		st.Pods = append(st.Pods, labPod{Name: p.Name, NS: p.NS, Addr: p.Addr.String(), Names: p.Names})
		for _, app := range labEchoApps {
			listen, ports := ":"+strconv.Itoa(app.port), []int{app.port}
			if app.second != 0 {
				listen, ports = listen+",:"+strconv.Itoa(app.second), append(ports, app.second)
			}
			proc, err := cl.Start(p, appUID, "echo-"+app.proto, self, "echo", "--proto", app.proto, "--listen", listen)
			if err != nil {
				return nil, err
			}
			for _, port := range ports {
				if err := cl.WaitListening(p, "127.0.0.1:"+strconv.Itoa(port), proc, ready); err != nil {
					return nil, err
				}
			}
			st.Processes = append(st.Processes, labProcT{Pod: p.Name, Label: proc.Label, Pid: proc.Pid(), UID: proc.UID, Log: proc.Log})
		}
	}
	return st, nil
}

func parsePods(s string) ([]string, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 26 {
			return nil, errors.New("want 1 to 26 pods, or a list of names")
		}
		var names []string
		for i := range n {
			names = append(names, string(rune('a'+i)))
		}
		return names, nil
	}
	names := strings.Split(s, ",")
	for _, n := range names {
		if !labNameRE.MatchString(n) {
			return nil, fmt.Errorf("pod name %q: want lower-case letters, digits and '-'", n)
		}
	}
	return names, nil
}

func writeState(s *labState) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(s.Name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(s.Name))
}

func printState(w io.Writer, s *labState) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tADDRESS\tNAMESPACE\tNAMES")
	for _, p := range s.Pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Addr, p.NS, strings.Join(p.Names, " "))
	}
	tw.Flush()
	fmt.Fprintf(w, "bridge %s in namespace %s; apps: ", s.Gateway, s.Hub)
	for i, a := range labEchoApps {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s :%d", a.proto, a.port)
		if a.second != 0 {
			fmt.Fprintf(w, " and :%d", a.second)
		}
	}
	fmt.Fprintln(w)
	switch {
	case s.Sidecars:
		fmt.Fprintf(w, "interception: on; sidecars: in every pod (transparent, plain TCP %s)\n", s.Policy)
		for _, svc := range s.Services {
			fmt.Fprintf(w, "  service %s: %s (virtual IP %s), %s\n", svc.Name, svc.DNS, svc.VIP, svc.ID)
		}
	case s.Intercept:
		fmt.Fprintln(w, "interception: on (quicmesh init in every pod); sidecars: none, so TCP between pods is refused")
	default:
		fmt.Fprintln(w, "interception: off; sidecars: none (pods talk directly)")
	}
}

func runLabStatus(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev lab status", "Usage: quicmesh-dev lab status [--name NAME]\n\nShows a running lab: pods, namespaces, apps and whether they run.\n", stdout, stderr)
	name := labNameFlag(c)
	if code, ok := c.Parse(args); !ok {
		return code
	}
	s, err := readState(*name)
	if err != nil {
		return c.Fail("%v", err)
	}
	if s == nil {
		return c.Fail("lab %q is not up", *name)
	}
	if !alive(s.Pid) {
		return c.Fail("lab %q: its process %d is gone; 'quicmesh-dev lab down --name %s' cleans up what it left", *name, s.Pid, *name)
	}
	fmt.Fprintf(stdout, "lab %q: up (process %d)\n", s.Name, s.Pid)
	printState(stdout, s)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tPROCESS\tPID\tUID\tSTATE")
	for _, p := range s.Processes {
		state := "running"
		if !alive(p.Pid) {
			state = "exited (log: " + p.Log + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", p.Pod, p.Label, p.Pid, p.UID, state)
	}
	tw.Flush()
	return cli.ExitOK
}

func runLabDown(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh-dev lab down", `Usage: quicmesh-dev lab down [--name NAME]

Stops the lab's process, which tears the lab down, and waits for it. If
that process is gone (killed), removes what it left: namespaces, the
processes in them, hosts files, directories. Nothing to do is not an
error.
`, stdout, stderr)
	name := labNameFlag(c)
	timeout := c.Flags.Duration("timeout", time.Minute, "how long the lab may take to tear down before it is killed")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	s, err := readState(*name)
	if err != nil {
		return c.Fail("%v", err)
	}
	if s == nil {
		// Still sweep: a lab process killed before it wrote its state.
		cluster.SweepStale()
		fmt.Fprintf(stdout, "lab %q is not up\n", *name)
		return cli.ExitOK
	}
	if alive(s.Pid) {
		syscall.Kill(s.Pid, syscall.SIGTERM)
		if !waitGone(s.Pid, *timeout) {
			syscall.Kill(s.Pid, syscall.SIGKILL)
			waitGone(s.Pid, *timeout)
		}
	}
	// Whatever a killed lab process left; a no-op after a clean exit.
	cluster.SweepStale()
	// An app another process's sweep killed may not have exited yet, or
	// it may have left its namespace: wait for (or kill) every app of
	// this lab still running from its directory.
	var left []int
	for _, p := range s.Processes {
		if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid) + "/cmdline"); err == nil && alive(p.Pid) && bytes.Contains(cmdline, []byte(s.Dir)) {
			left = append(left, p.Pid)
		}
	}
	if _, err := netlab.KillWait(left...); err != nil {
		return c.Fail("stopping the lab's apps: %v", err)
	}
	if err := os.Remove(statePath(*name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return c.Fail("%v", err)
	}
	fmt.Fprintf(stdout, "lab %q is down\n", *name)
	return cli.ExitOK
}

// waitGone waits until process pid no longer exists. The lab's process
// is not our child, so there is nothing to wait on but the pid itself.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
