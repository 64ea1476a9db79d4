// Package cluster builds a small cluster of pods on one machine, for tests
// and the lab (`quicmesh-dev lab`): each pod a network namespace with its
// own IPv4 address, plugged into a bridge that lives in a namespace of its
// own (bench/netlab), so nothing is added to the host's network: no
// address, route, interface or rule outside the lab's namespaces.
//
// Inside every pod, `ip netns exec` gives processes an /etc/hosts that
// names every pod (<pod> and <pod>.pod.<domain>) and any extra names (the
// services' virtual IPs, say); with [Config.Intercept] set the pod gets
// quicmesh init's iptables rules (internal/intercept), the same code as the
// command. [Cluster.Start] runs a command in a pod as a given UID, so an
// app and its sidecar run as different users, which the rules need.
//
// [Cluster.Close] tears everything down and is idempotent: it stops the
// processes it started (SIGTERM, then SIGKILL after [Config.StopGrace]),
// kills anything else still inside a pod, and deletes the namespaces
// (their interfaces, the bridge and the rules go with them), the hosts
// files and the cluster's directory. Tests call it from t.Cleanup, so it
// also runs when they fail. A process that dies without Close leaves
// namespaces that the next netlab.New sweeps, processes in them included.
package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/intercept"
)

// Defaults of Config.
const (
	DefaultSubnet    = "10.88.0.0/24"
	DefaultDomain    = "cluster.local"
	DefaultStopGrace = 5 * time.Second
	// RunDir holds one directory per cluster (logs, shared executables).
	RunDir = "/run/quicmesh-lab"
)

// Config describes a cluster.
type Config struct {
	// Prefix starts every namespace and interface name (netlab.New);
	// "" means "lab".
	Prefix string
	// Pods names the pods, in order: lower-case DNS labels.
	Pods []string
	// Subnet is the pods' IPv4 network; the bridge takes its first
	// address, the pods the following ones. "" means DefaultSubnet.
	Subnet string
	// Domain is the cluster's DNS domain; "" means DefaultDomain.
	Domain string
	// Hosts adds names to every pod's /etc/hosts.
	Hosts map[string]netip.Addr
	// Intercept, when set, is applied in every pod (IPv4 and IPv6), as
	// `quicmesh init` would.
	Intercept *intercept.Config
	// StopGrace is how long Close waits for a process after SIGTERM
	// before it kills it; 0 means DefaultStopGrace.
	StopGrace time.Duration
}

// Pod is one pod of the cluster.
type Pod struct {
	Name  string
	NS    string     // network namespace, as `ip netns` names it
	Addr  netip.Addr // on the cluster's bridge
	Names []string   // the pod's names in every pod's /etc/hosts
}

// Cluster is a running cluster. Its methods are safe for concurrent use.
type Cluster struct {
	cfg    Config
	lab    *netlab.Lab
	bridge *netlab.Bridge
	pods   []*Pod
	dir    string

	mu     sync.Mutex
	closed bool
	procs  []*Process
}

var labelRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Up builds the cluster. On error it has torn down whatever it built.
func Up(cfg Config) (_ *Cluster, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "lab"
	}
	if cfg.Subnet == "" {
		cfg.Subnet = DefaultSubnet
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if len(cfg.Pods) == 0 {
		return nil, errors.New("cluster: no pods")
	}
	for i, p := range cfg.Pods {
		if !labelRE.MatchString(p) || p == "hub" {
			return nil, fmt.Errorf("cluster: pod name %q: want a lower-case DNS label of at most 32 bytes, not \"hub\"", p)
		}
		if slices.Contains(cfg.Pods[:i], p) {
			return nil, fmt.Errorf("cluster: pod %q given twice", p)
		}
	}
	if cfg.Intercept != nil {
		if err := cfg.Intercept.Validate(); err != nil {
			return nil, fmt.Errorf("cluster: intercept: %w", err)
		}
	}
	lab, err := netlab.New(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	sweepStaleDirs()
	c := &Cluster{cfg: cfg, lab: lab, dir: filepath.Join(RunDir, fmt.Sprintf("%s.%d", lab.ID(), os.Getpid()))}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = fmt.Errorf("%w (and tearing down: %v)", err, cerr)
			}
		}
	}()
	// Other UIDs run what Share copies here, so it is world-readable.
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := os.Chmod(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if c.bridge, err = lab.Bridge("hub", cfg.Subnet); err != nil {
		return nil, err
	}
	for _, name := range cfg.Pods {
		ns, addr, err := c.bridge.Attach(name, "eth0")
		if err != nil {
			return nil, err
		}
		c.pods = append(c.pods, &Pod{Name: name, NS: ns, Addr: addr, Names: []string{name, name + ".pod." + cfg.Domain}})
	}
	hosts := c.hostsFile()
	for _, p := range c.pods {
		if err := lab.SetHosts(p.NS, hosts); err != nil {
			return nil, err
		}
		// Apps run as ordinary users and still listen on :80.
		if err := lab.Do(p.NS, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("0"), 0)
		}); err != nil {
			return nil, fmt.Errorf("cluster: pod %s: %w", p.Name, err)
		}
		if cfg.Intercept != nil {
			if err := c.intercept(p); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// SweepStale removes what clusters whose process died without Close left:
// their namespaces, the processes in them, hosts files and directories.
func SweepStale() {
	netlab.SweepStale()
	sweepStaleDirs()
}

var staleDirRE = regexp.MustCompile(`^[a-z][a-z0-9]*\.([0-9]+)$`)

// sweepStaleDirs removes the directories of clusters whose process died
// without Close (netlab.New sweeps their namespaces).
func sweepStaleDirs() {
	ents, _ := os.ReadDir(RunDir)
	for _, e := range ents {
		m := staleDirRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if pid, err := strconv.Atoi(m[1]); err == nil && pid != os.Getpid() && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			os.RemoveAll(filepath.Join(RunDir, e.Name()))
		}
	}
}

// intercept applies quicmesh init's rules in pod p. The iptables commands
// go-iptables starts from the thread Do moved into the pod run there.
func (c *Cluster) intercept(p *Pod) error {
	return c.lab.Do(p.NS, func() error {
		var fts []intercept.FamilyTables
		for _, f := range []intercept.Family{intercept.IPv4, intercept.IPv6} {
			t, err := intercept.New(f)
			if err != nil {
				return fmt.Errorf("cluster: pod %s: %w", p.Name, err)
			}
			fts = append(fts, intercept.FamilyTables{Family: f, Tables: t})
		}
		if err := intercept.ApplyAll(*c.cfg.Intercept, fts...); err != nil {
			return fmt.Errorf("cluster: pod %s: %w", p.Name, err)
		}
		return nil
	})
}

// hostsFile is every pod's /etc/hosts.
func (c *Cluster) hostsFile() string {
	var b strings.Builder
	b.WriteString("# written by quicmesh's lab cluster; removed with it\n127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	for _, p := range c.pods {
		fmt.Fprintf(&b, "%s\t%s\n", p.Addr, strings.Join(p.Names, " "))
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range c.cfg.Hosts {
			if !yield(n) {
				return
			}
		}
	})
	for _, n := range names {
		fmt.Fprintf(&b, "%s\t%s\n", c.cfg.Hosts[n], n)
	}
	return b.String()
}

// ID is the cluster's unique name prefix (the lab's).
func (c *Cluster) ID() string { return c.lab.ID() }

// Dir is the cluster's directory under RunDir, named by the cluster's ID
// and the pid of its process: process logs and shared executables. Close
// removes it; so does the next Up once that process is gone.
func (c *Cluster) Dir() string { return c.dir }

// Hub is the namespace holding the bridge, and Gateway the bridge's
// address.
func (c *Cluster) Hub() string                  { return c.bridge.NS }
func (c *Cluster) Gateway() netip.Addr          { return c.bridge.Addr }
func (c *Cluster) Namespaces() []string         { return c.lab.Namespaces() }
func (c *Cluster) Pods() []*Pod                 { return slices.Clone(c.pods) }
func (c *Cluster) Domain() string               { return c.cfg.Domain }
func (c *Cluster) Intercept() *intercept.Config { return c.cfg.Intercept }

// Pod returns the pod called name, or nil.
func (c *Cluster) Pod(name string) *Pod {
	for _, p := range c.pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Do runs fn on a thread inside pod p's network namespace (netlab's Do):
// sockets fn opens belong to the pod.
func (c *Cluster) Do(p *Pod, fn func() error) error { return c.lab.Do(p.NS, fn) }

// DoHub runs fn on a thread inside the hub namespace, which holds the
// bridge and no sidecar: a client or server there is outside the mesh.
func (c *Cluster) DoHub(fn func() error) error { return c.lab.Do(c.bridge.NS, fn) }

// Share copies the executable at path into the cluster's directory, where
// every UID may run it (a binary under root's home or a test's temporary
// directory is not), and returns the copy's path.
func (c *Cluster) Share(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	dst := filepath.Join(c.dir, "bin", filepath.Base(path))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if err := os.WriteFile(dst+".tmp", b, 0o755); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	return dst, nil
}

// Command returns a command that runs name with args in pod p as uid (and
// gid uid, no supplementary groups), with the pod's /etc/hosts: `ip netns
// exec` enters the namespace and mounts the hosts file, setpriv drops to
// the user; both exec, so the process's pid is the command's.
func (c *Cluster) Command(p *Pod, uid uint32, name string, args ...string) *exec.Cmd {
	u := strconv.FormatUint(uint64(uid), 10)
	return exec.Command("ip", append([]string{"netns", "exec", p.NS,
		"setpriv", "--reuid", u, "--regid", u, "--clear-groups", "--", name}, args...)...)
}

// Process is a command Start runs in a pod.
type Process struct {
	Pod   *Pod
	Label string // names it in logs and errors
	UID   uint32
	Log   string // the file its stdout and stderr go to

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended; valid after Done.
func (p *Process) Err() error { return p.err }

// LogTail returns at most the last n bytes of the process's output.
func (p *Process) LogTail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Start runs name with args in pod p as uid (Command), in a process group
// of its own, output to a log file in the cluster's directory. Close stops
// it.
func (c *Cluster) Start(p *Pod, uid uint32, label, name string, args ...string) (*Process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("cluster: closed")
	}
	if !labelRE.MatchString(label) {
		return nil, fmt.Errorf("cluster: process label %q: want a lower-case DNS label", label)
	}
	logPath := filepath.Join(c.dir, fmt.Sprintf("%s-%s.log", p.Name, label))
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	defer logFile.Close()
	cmd := c.Command(p, uid, name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cluster: pod %s: starting %s: %w", p.Name, label, err)
	}
	proc := &Process{Pod: p, Label: label, UID: uid, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		close(proc.done)
	}()
	c.procs = append(c.procs, proc)
	return proc, nil
}

// WaitListening waits until something in pod p accepts TCP connections
// on addr, for at most timeout. A process just started has no other way
// to say it is ready; proc, when not nil, is the one expected to listen,
// and its exit ends the wait early with its log.
func (c *Cluster) WaitListening(p *Pod, addr string, proc *Process, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var exited <-chan struct{}
	if proc != nil {
		exited = proc.Done()
	}
	for {
		err := c.Do(p, func() error {
			conn, err := net.DialTimeout("tcp", addr, timeout)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("cluster: pod %s: %s exited before listening on %s (%v): %s", p.Name, proc.Label, addr, proc.Err(), proc.LogTail(1024))
		case <-deadline.C:
			return fmt.Errorf("cluster: pod %s: nothing listens on %s after %v: %w", p.Name, addr, timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Processes lists what Start started, in order.
func (c *Cluster) Processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.procs)
}

// Close tears the cluster down (see the package documentation). It is
// idempotent and reports every failure.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := c.procs
	c.mu.Unlock()

	for _, p := range procs {
		syscall.Kill(-p.Pid(), syscall.SIGTERM)
	}
	grace := time.After(c.cfg.StopGrace)
	expired := false
	for _, p := range procs {
		if !expired {
			select {
			case <-p.done:
				continue
			case <-grace:
				expired = true
			}
		}
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
	var errs []error
	// Anything else in a pod (a child that left the process group, a
	// command someone ran by hand) would keep its namespace alive.
	if _, err := c.lab.KillAll(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, c.lab.Close())
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("cluster: %w", err))
	}
	return errors.Join(errs...)
}
