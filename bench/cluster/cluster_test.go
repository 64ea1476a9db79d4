//go:build linux

package cluster_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/intercept"
	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const (
	appUID   = 2101
	proxyUID = 2102
	// ioTimeout only bounds a failing test.
	ioTimeout = 30 * time.Second
)

// helperEnv makes the test binary a tiny app instead of the tests (see
// TestMain): the processes the cluster starts in its pods.
const helperEnv = "QUICMESH_CLUSTER_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helper runs one of:
//
//	serve ADDR NAME     answer every TCP connection with "NAME uid=UID\n"
//	connect ADDR        print the first line the server at ADDR sends
//	resolve NAME        print NAME's addresses
//	stubborn            ignore SIGTERM and wait forever
func helper(args []string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	switch {
	case len(args) == 3 && args[0] == "serve":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			return fail(err)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(c, "%s uid=%d\n", args[2], os.Getuid())
			c.Close()
		}
	case len(args) == 2 && args[0] == "connect":
		c, err := net.DialTimeout("tcp", args[1], ioTimeout)
		if err != nil {
			return fail(err)
		}
		c.SetDeadline(time.Now().Add(ioTimeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fail(err)
		}
		fmt.Print(line)
		return 0
	case len(args) == 2 && args[0] == "resolve":
		addrs, err := net.LookupHost(args[1])
		if err != nil {
			return fail(err)
		}
		fmt.Println(strings.Join(addrs, " "))
		return 0
	case len(args) == 1 && args[0] == "stubborn":
		signal.Ignore(syscall.SIGTERM)
		select {}
	}
	return fail(fmt.Errorf("helper: bad arguments %q", args))
}

// up builds a cluster and tears it down at the end of the test (also when
// it fails), then checks that nothing is left.
func up(t *testing.T, cfg cluster.Config) (*cluster.Cluster, string) {
	t.Helper()
	testkit.NeedNetns(t, netlab.Available)
	for _, c := range []string{"setpriv", "ip6tables"} {
		testkit.NeedNetns(t, func() error { _, err := exec.LookPath(c); return err })
	}
	before := hostState(t)
	c, err := cluster.Up(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if during := hostState(t); during != before {
		t.Errorf("the lab changed the host's network:\nbefore:\n%s\nwith the lab:\n%s", before, during)
	}
	t.Cleanup(func() {
		nss, dir := c.Namespaces(), c.Dir()
		var pids []int
		for _, p := range c.Processes() {
			pids = append(pids, p.Pid())
			if t.Failed() {
				t.Logf("--- %s/%s log ---\n%s", p.Pod.Name, p.Label, p.LogTail(4<<10))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		assertGone(t, nss, dir, pids)
		if after := hostState(t); after != before {
			t.Errorf("the host's network changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
	self, err := c.Share(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	return c, self
}

// hostState is what the lab must not change in the host's own namespace:
// its interfaces, addresses, routes and iptables rules.
func hostState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-o", "link", "show"}, {"ip", "-o", "addr", "show"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"iptables-save"}, {"ip6tables-save"},
	} {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			// Interface counters and states are not the lab's business.
			line = regexp.MustCompile(`\[\d+:\d+\]|state \S+|qlen \d+`).ReplaceAllString(line, "")
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// assertGone checks that no namespace, hosts file, directory or process of
// the cluster is left.
func assertGone(t *testing.T, nss []string, dir string, pids []int) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, ns := range nss {
		if strings.Contains(string(out), ns) {
			t.Errorf("namespace %s is left", ns)
		}
		if _, err := os.Stat(filepath.Join("/etc/netns", ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/etc/netns/%s is left (%v)", ns, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is left (%v)", dir, err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d is left (%v)", pid, err)
		}
	}
	// Whatever else ran from the cluster's directory.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), dir) {
			t.Errorf("%s: %q is left", filepath.Dir(p), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// run runs the helper in pod p as uid and returns its output.
func run(t *testing.T, c *cluster.Cluster, p *cluster.Pod, uid uint32, self string, args ...string) string {
	t.Helper()
	cmd := c.Command(p, uid, self, args...)
	cmd.Env = []string{helperEnv + "=1"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in pod %s as uid %d: %v: %s", strings.Join(args, " "), p.Name, uid, err, out)
	}
	return strings.TrimSpace(string(out))
}

func start(t *testing.T, c *cluster.Cluster, p *cluster.Pod, uid uint32, label, self string, args ...string) *cluster.Process {
	t.Helper()
	proc, err := c.Start(p, uid, label, "env", append([]string{helperEnv + "=1", self}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return proc
}

func waitListening(t *testing.T, c *cluster.Cluster, p *cluster.Pod, addr string, proc *cluster.Process) {
	t.Helper()
	if err := c.WaitListening(p, addr, proc, ioTimeout); err != nil {
		t.Fatal(err)
	}
}

// netnsInode is the inode of a network namespace file.
func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func procUID(t *testing.T, pid int) uint32 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no Uid in /proc/%d/status", pid)
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 32)
	return uint32(n)
}

// Pods reach each other by cluster DNS name; each app runs in its pod's
// namespace as the UID it was given; nothing reaches the host.
func TestPodsByName(t *testing.T) {
	c, self := up(t, cluster.Config{Prefix: "qcn", Pods: []string{"a", "b", "c"}, Subnet: "10.88.1.0/24",
		Hosts: map[string]netip.Addr{"orders.shop.svc.cluster.local": netip.MustParseAddr("10.96.0.10")}})
	pods := c.Pods()
	for i, p := range pods {
		if want := netip.MustParseAddr(fmt.Sprintf("10.88.1.%d", i+2)); p.Addr != want {
			t.Errorf("pod %s has %v, want %v", p.Name, p.Addr, want)
		}
		proc := start(t, c, p, appUID, "app", self, "serve", ":7000", p.Name)
		waitListening(t, c, p, "127.0.0.1:7000", proc)
		if got := procUID(t, proc.Pid()); got != appUID {
			t.Errorf("pod %s app runs as uid %d, want %d", p.Name, got, appUID)
		}
		if got, want := netnsInode(t, fmt.Sprintf("/proc/%d/ns/net", proc.Pid())), netnsInode(t, "/var/run/netns/"+p.NS); got != want {
			t.Errorf("pod %s app is not in the pod's namespace", p.Name)
		}
	}
	a := c.Pod("a")
	for _, tt := range []struct{ name, want string }{
		{"b", "10.88.1.3"}, {"c.pod.cluster.local", "10.88.1.4"}, {"orders.shop.svc.cluster.local", "10.96.0.10"},
	} {
		if got := run(t, c, a, appUID, self, "resolve", tt.name); got != tt.want {
			t.Errorf("in pod a, %s resolves to %q, want %q", tt.name, got, tt.want)
		}
	}
	for _, to := range []string{"b", "c.pod.cluster.local"} {
		got := run(t, c, a, appUID, self, "connect", to+":7000")
		if want := strings.Split(to, ".")[0] + " uid=" + strconv.Itoa(appUID); got != want {
			t.Errorf("a → %s: %q, want %q", to, got, want)
		}
	}
}

// With interception, an app's connection to another pod goes to its own
// pod's outbound port with the original destination intact; the sidecar
// UID's connection leaves the pod and, at the other pod, goes to that
// pod's inbound port.
func TestInterceptPerPod(t *testing.T) {
	ic := &intercept.Config{ProxyUID: proxyUID, OutboundPort: 15001, InboundPort: 15006, AdminPort: 15020, MeshPort: 15030}
	c, self := up(t, cluster.Config{Prefix: "qci", Pods: []string{"a", "b"}, Subnet: "10.88.2.0/24", Intercept: ic})
	a, b := c.Pod("a"), c.Pod("b")
	answer := func(p *cluster.Pod, port int, reply string) chan error {
		var ln net.Listener
		if err := c.Do(p, func() (err error) {
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		errc := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			dst, err := origdst.Destination(conn.(*net.TCPConn))
			if err == nil {
				_, err = fmt.Fprintf(conn, "%s orig=%v\n", reply, dst)
			}
			errc <- err
		}()
		return errc
	}
	want := netip.AddrPortFrom(b.Addr, 7000)

	outA := answer(a, 15001, "a-outbound")
	if got := run(t, c, a, appUID, self, "connect", "b:7000"); got != "a-outbound orig="+want.String() {
		t.Errorf("app in a → b:7000 reached %q", got)
	}
	if err := <-outA; err != nil {
		t.Fatal(err)
	}

	inB := answer(b, 15006, "b-inbound")
	if got := run(t, c, a, proxyUID, self, "connect", "b.pod.cluster.local:7000"); got != "b-inbound orig="+want.String() {
		t.Errorf("sidecar uid in a → b:7000 reached %q", got)
	}
	if err := <-inB; err != nil {
		t.Fatal(err)
	}
}

// A failure part-way through Up leaves nothing: here the subnet has room
// for one pod of two.
func TestUpFailureTearsDown(t *testing.T) {
	testkit.NeedNetns(t, netlab.Available)
	before, _ := filepath.Glob("/var/run/netns/qcf*")
	_, err := cluster.Up(cluster.Config{Prefix: "qcf", Pods: []string{"a", "b"}, Subnet: "10.88.3.0/30"})
	if err == nil || !strings.Contains(err.Error(), "no address left") {
		t.Fatalf("Up = %v, want no address left", err)
	}
	after, _ := filepath.Glob("/var/run/netns/qcf*")
	if len(after) != len(before) {
		t.Fatalf("namespaces left after a failed Up: %v (before: %v)", after, before)
	}
	etc, _ := filepath.Glob("/etc/netns/qcf*")
	dirs, _ := filepath.Glob(filepath.Join(cluster.RunDir, "qcf*"))
	if len(etc)+len(dirs) != 0 {
		t.Fatalf("left after a failed Up: %v %v", etc, dirs)
	}
}

// Close stops a process that ignores SIGTERM after the grace period, and
// kills what it did not start itself.
func TestCloseKillsEverything(t *testing.T) {
	c, self := up(t, cluster.Config{Prefix: "qck", Pods: []string{"a"}, Subnet: "10.88.4.0/24", StopGrace: 200 * time.Millisecond})
	a := c.Pod("a")
	stubborn := start(t, c, a, appUID, "stubborn", self, "stubborn")
	byHand := c.Command(a, appUID, self, "serve", ":7001", "a")
	byHand.Env = []string{helperEnv + "=1"}
	if err := byHand.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- byHand.Wait() }()
	waitListening(t, c, a, "127.0.0.1:7001", stubborn)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-stubborn.Done()
	if err := <-waited; err == nil {
		t.Error("the process started by hand was not killed")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg  cluster.Config
		want string
	}{
		{cluster.Config{}, "no pods"},
		{cluster.Config{Pods: []string{"A"}}, `pod name "A"`},
		{cluster.Config{Pods: []string{"hub"}}, `pod name "hub"`},
		{cluster.Config{Pods: []string{"a", "a"}}, `pod "a" given twice`},
		{cluster.Config{Pods: []string{"a"}, Intercept: &intercept.Config{}}, "intercept: --proxy-uid 0"},
	} {
		if _, err := cluster.Up(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Up(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}
