//go:build linux

package intercept_test

// The rules at work, in real network namespaces (bench/netlab): a "pod"
// namespace gets the rules, a "peer" namespace stands for the rest of the
// network. Sockets are made inside the namespaces with netlab's Do, and
// as the app's or the sidecar's UID by switching the creating thread's
// fsuid (the UID the kernel stamps on a socket, which -m owner matches).

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/intercept"
	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const (
	appUID   = 2001
	proxyUID = 2002
	// ioTimeout only bounds a failing test; a passing one never waits
	// for it.
	ioTimeout = 20 * time.Second
)

var (
	podIP4     = netip.MustParseAddr("10.77.40.1")
	peerIP4    = netip.MustParseAddr("10.77.40.2")
	peerSkip4  = netip.MustParseAddr("10.77.40.3") // in --skip-outbound-cidrs
	podIP6     = netip.MustParseAddr("fd00:77:40::1")
	peerIP6    = netip.MustParseAddr("fd00:77:40::2")
	outsideIP4 = netip.MustParseAddr("203.0.113.7") // routed via the peer, listened on by nobody
	outsideIP6 = netip.MustParseAddr("2001:db8::7")
)

// testConfig has a skip entry of every kind.
func testConfig() intercept.Config {
	return intercept.Config{
		ProxyUID: proxyUID, OutboundPort: 15001, InboundPort: 15006, AdminPort: 15020, MeshPort: 15030,
		SkipOutboundPorts: []intercept.PortRange{{7777, 7777}, {7800, 7810}},
		SkipInboundPorts:  []intercept.PortRange{{9100, 9100}},
		SkipOutboundCIDRs: []netip.Prefix{netip.PrefixFrom(peerSkip4, 32), netip.MustParsePrefix("fd00:77:41::/64")},
	}
}

type pod struct {
	lab       *netlab.Lab
	ns, peer  string
	fts       []intercept.FamilyTables // built inside ns
	tablesErr error
}

// newPod builds the pod and peer namespaces, joined by a veth, each with
// an IPv4 and an IPv6 address; the pod routes everything else via the
// peer.
func newPod(t *testing.T) *pod {
	t.Helper()
	testkit.NeedNetns(t, netlab.Available)
	for _, c := range []string{"ip6tables", "iptables-save", "ip6tables-save"} {
		testkit.NeedNetns(t, func() error { _, err := exec.LookPath(c); return err })
	}
	lab, err := netlab.New("qi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	k, err := lab.Pair("pod", "peer", "10.77.40.0/24")
	if err != nil {
		t.Fatal(err)
	}
	p := &pod{lab: lab, ns: k.NSA, peer: k.NSB}
	p.ip(t, p.ns, "addr", "add", podIP6.String()+"/64", "dev", k.IfA, "nodad")
	p.ip(t, p.peer, "addr", "add", peerIP6.String()+"/64", "dev", k.IfB, "nodad")
	p.ip(t, p.peer, "addr", "add", peerSkip4.String()+"/24", "dev", k.IfB)
	p.ip(t, p.ns, "route", "add", "default", "via", peerIP4.String())
	p.ip(t, p.ns, "-6", "route", "add", "default", "via", peerIP6.String())
	if err := lab.Do(p.ns, func() error {
		for _, f := range []intercept.Family{intercept.IPv4, intercept.IPv6} {
			tb, err := intercept.New(f)
			if err != nil {
				return err
			}
			p.fts = append(p.fts, intercept.FamilyTables{Family: f, Tables: tb})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pod) ip(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// apply runs ApplyAll inside the pod: go-iptables' commands are started
// from the thread Do switched into the namespace, so they act there.
func (p *pod) apply(t *testing.T, c intercept.Config) {
	t.Helper()
	if err := p.lab.Do(p.ns, func() error { return intercept.ApplyAll(c, p.fts...) }); err != nil {
		t.Fatal(err)
	}
}

func (p *pod) undo(t *testing.T) {
	t.Helper()
	if err := p.lab.Do(p.ns, func() error { return intercept.UndoAll(p.fts...) }); err != nil {
		t.Fatal(err)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// ruleSet is iptables-save and ip6tables-save of the pod without the
// comment lines (which carry a time) and counters. A table that holds
// nothing but its built-in chains with ACCEPT policies is left out: the
// kernel creates it on first use and never removes it, and it filters
// nothing.
func (p *pod) ruleSet(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := p.lab.Command(p.ns, cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		b.WriteString("# " + cmd + "\n")
		var table []string
		empty := true
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case line == "" || strings.HasPrefix(line, "#"):
				continue
			case strings.HasPrefix(line, "*"):
				table, empty = []string{line}, true
				continue
			case line == "COMMIT":
				if !empty {
					b.WriteString(strings.Join(table, "\n") + "\nCOMMIT\n")
				}
				continue
			case strings.HasPrefix(line, ":"):
				if !regexp.MustCompile(`^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT `).MatchString(line) {
					empty = false
				}
			default:
				empty = false
			}
			table = append(table, counters.ReplaceAllString(line, "[0:0]"))
		}
	}
	return b.String()
}

// listen opens a TCP listener inside ns.
func (p *pod) listen(t *testing.T, ns string, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	if err := p.lab.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dial connects from ns to dst with a socket owned by uid.
func (p *pod) dial(t *testing.T, ns string, uid int, dst netip.AddrPort) *net.TCPConn {
	t.Helper()
	var c net.Conn
	if err := p.lab.Do(ns, func() (err error) {
		// Per thread, and this thread ends with Do: see netlab.Lab.Do.
		unix.SetfsuidRetUid(uid)
		if got, _ := unix.SetfsuidRetUid(-1); got != uid {
			return fmt.Errorf("setfsuid(%d) left fsuid %d", uid, got)
		}
		c, err = net.DialTimeout("tcp", dst.String(), ioTimeout)
		return err
	}); err != nil {
		t.Fatalf("dial %v as uid %d: %v", dst, uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// acceptFrom accepts on ln until the connection whose far end is client
// arrives.
func acceptFrom(t *testing.T, ln *net.TCPListener, client net.Addr) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(ioTimeout))
	want := client.(*net.TCPAddr).AddrPort()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			t.Fatalf("waiting on %v for the connection from %v: %v", ln.Addr(), client, err)
		}
		t.Cleanup(func() { c.Close() })
		got := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if got.Addr().Unmap() == want.Addr().Unmap() && got.Port() == want.Port() {
			return c
		}
	}
}

// arrives checks that client's connection to dst arrives at direct, or,
// when direct is nil, at redirect with dst as its original destination.
func arrives(t *testing.T, client *net.TCPConn, dst netip.AddrPort, direct, redirect *net.TCPListener) {
	t.Helper()
	if direct != nil {
		acceptFrom(t, direct, client.LocalAddr())
		return
	}
	got, err := origdst.Destination(acceptFrom(t, redirect, client.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	if got != dst {
		t.Errorf("original destination %v, want %v", got, dst)
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// A connection is at exactly one listener: where the case expects it
// proves it is nowhere else.
func TestOutboundRedirect(t *testing.T) {
	p := newPod(t)
	c := testConfig()
	p.apply(t, c)
	out := p.listen(t, p.ns, fmt.Sprintf(":%d", c.OutboundPort)) // dual stack, as a sidecar would
	local := p.listen(t, p.ns, "127.0.0.1:8081")
	own := p.listen(t, p.ns, podIP4.String()+":8082")
	peer := map[uint16]*net.TCPListener{}
	for _, port := range []uint16{8080, 7777, 7805} {
		peer[port] = p.listen(t, p.peer, fmt.Sprintf(":%d", port))
	}

	tests := []struct {
		name   string
		uid    int
		dst    netip.AddrPort
		direct *net.TCPListener // nil: redirected to the outbound port
	}{
		{"app to an IPv4 address outside", appUID, ap(outsideIP4, 80), nil},
		{"app to an IPv6 address outside", appUID, ap(outsideIP6, 443), nil},
		{"app to the peer", appUID, ap(peerIP4, 8080), nil},
		{"app to the peer over IPv6", appUID, ap(peerIP6, 8080), nil},
		{"root to the peer", 0, ap(peerIP4, 8080), nil},
		{"sidecar to the peer", proxyUID, ap(peerIP4, 8080), peer[8080]},
		{"sidecar to the peer over IPv6", proxyUID, ap(peerIP6, 8080), peer[8080]},
		{"app to loopback", appUID, ap(netip.MustParseAddr("127.0.0.1"), 8081), local},
		{"app to its own pod address", appUID, ap(podIP4, 8082), own},
		{"app to a skipped port", appUID, ap(peerIP4, 7777), peer[7777]},
		{"app to a port in a skipped range", appUID, ap(peerIP6, 7805), peer[7805]},
		{"app to a skipped CIDR", appUID, ap(peerSkip4, 8080), peer[8080]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrives(t, p.dial(t, p.ns, tt.uid, tt.dst), tt.dst, tt.direct, out)
		})
	}
}

func TestInboundRedirect(t *testing.T) {
	p := newPod(t)
	c := testConfig()
	p.apply(t, c)
	in := p.listen(t, p.ns, fmt.Sprintf(":%d", c.InboundPort))
	direct := map[uint16]*net.TCPListener{}
	for _, port := range []uint16{c.AdminPort, c.MeshPort, 9100} {
		direct[port] = p.listen(t, p.ns, fmt.Sprintf(":%d", port))
	}
	tests := []struct {
		name   string
		dst    netip.AddrPort
		direct *net.TCPListener
	}{
		{"to an app port", ap(podIP4, 8080), nil},
		{"to an app port over IPv6", ap(podIP6, 8080), nil},
		{"to another app port", ap(podIP4, 9090), nil},
		{"to the admin port", ap(podIP4, c.AdminPort), direct[c.AdminPort]},
		{"to the mesh port over TCP", ap(podIP6, c.MeshPort), direct[c.MeshPort]},
		{"to a skipped port", ap(podIP4, 9100), direct[9100]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrives(t, p.dial(t, p.peer, appUID, tt.dst), tt.dst, tt.direct, in)
		})
	}
}

// UDP to the mesh port is never redirected, and a connection made to the
// outbound listener itself has no original destination to go to.
func TestNotRedirected(t *testing.T) {
	p := newPod(t)
	c := testConfig()
	p.apply(t, c)
	var udp net.PacketConn
	if err := p.lab.Do(p.ns, func() (err error) {
		udp, err = net.ListenPacket("udp", fmt.Sprintf(":%d", c.MeshPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	var sender net.Conn
	if err := p.lab.Do(p.peer, func() (err error) {
		sender, err = net.Dial("udp", ap(podIP4, c.MeshPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("quic")); err != nil {
		t.Fatal(err)
	}
	udp.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 16)
	n, _, err := udp.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "quic" {
		t.Fatalf("UDP to the mesh port: read %q, %v", buf[:n], err)
	}

	out := p.listen(t, p.ns, fmt.Sprintf("%s:%d", podIP4, c.OutboundPort))
	client := p.dial(t, p.ns, proxyUID, ap(podIP4, c.OutboundPort))
	if dst, err := origdst.Destination(acceptFrom(t, out, client.LocalAddr())); !errors.Is(err, origdst.ErrNotRedirected) {
		t.Fatalf("Destination of a direct connection = %v, %v; want ErrNotRedirected", dst, err)
	}
}

// Re-running changes nothing; a new configuration replaces the old rules
// instead of adding to them; Undo leaves the rule set as it was,
// including rules that were there before.
func TestApplyIdempotentAndUndoExact(t *testing.T) {
	p := newPod(t)
	for _, pre := range [][]string{
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "RETURN"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "22", "-j", "RETURN"},
		{"iptables", "-A", "INPUT", "-p", "tcp", "--dport", "23", "-j", "DROP"},
		{"ip6tables", "-t", "nat", "-A", "OUTPUT", "-d", "2001:db8::1/128", "-j", "RETURN"},
	} {
		if out, err := p.lab.Command(p.ns, pre[0], pre[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", pre, err, out)
		}
	}
	before := p.ruleSet(t)

	c := testConfig()
	p.apply(t, c)
	once := p.ruleSet(t)
	if once == before {
		t.Fatal("Apply changed no rule")
	}
	for _, want := range []string{"-A OUTPUT -p tcp -m comment --comment \"quicmesh: outbound TCP to the sidecar\" -j QUICMESH_OUTPUT\n-A OUTPUT -d 192.0.2.1/32 -j RETURN",
		"--uid-owner 2002", "--to-ports 15001", "--to-ports 15006", "-d 10.77.40.3/32", "-d fd00:77:41::/64", "--dport 7800:7810"} {
		if !strings.Contains(once, want) {
			t.Errorf("rules after Apply lack %q:\n%s", want, once)
		}
	}
	p.apply(t, c)
	if twice := p.ruleSet(t); twice != once {
		t.Fatalf("a second Apply changed the rules:\nonce:\n%s\ntwice:\n%s", once, twice)
	}

	c2 := c
	c2.OutboundPort, c2.SkipOutboundPorts = 16001, nil
	p.apply(t, c2)
	changed := p.ruleSet(t)
	if strings.Contains(changed, "--to-ports 15001") || strings.Contains(changed, "7777") || !strings.Contains(changed, "--to-ports 16001") {
		t.Errorf("after Apply with a new configuration:\n%s", changed)
	}
	if n := strings.Count(changed, "-j QUICMESH_OUTPUT"); n != 2 { // one per family
		t.Errorf("%d jumps to QUICMESH_OUTPUT, want one per family:\n%s", n, changed)
	}

	p.undo(t)
	if after := p.ruleSet(t); after != before {
		t.Fatalf("Undo did not restore the rule set:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	p.undo(t) // nothing to remove: still fine, still unchanged
	if after := p.ruleSet(t); after != before {
		t.Fatalf("a second Undo changed the rule set:\n%s", after)
	}
}

// In a namespace that never had a nat rule, Apply then Undo leaves no
// rule (only the empty built-in chains the kernel keeps).
func TestUndoOnFreshNamespace(t *testing.T) {
	p := newPod(t)
	before := p.ruleSet(t)
	p.apply(t, testConfig())
	p.undo(t)
	if after := p.ruleSet(t); after != before {
		t.Fatalf("before:\n%s\nafter:\n%s", before, after)
	}
}

// The --dry-run output, pasted into a shell in the pod, writes exactly the
// rules Apply writes, and the printed undo removes them.
func TestPrintedCommandsMatchApply(t *testing.T) {
	p := newPod(t)
	c := testConfig()
	before := p.ruleSet(t)
	var script, undo strings.Builder
	if err := intercept.PrintApply(&script, c, intercept.IPv4, intercept.IPv6); err != nil {
		t.Fatal(err)
	}
	if err := intercept.PrintUndo(&undo, intercept.IPv4, intercept.IPv6); err != nil {
		t.Fatal(err)
	}
	sh := func(s string) {
		t.Helper()
		if out, err := p.lab.Command(p.ns, "sh", "-e", "-c", s).CombinedOutput(); err != nil {
			t.Fatalf("sh: %v: %s\nscript:\n%s", err, out, s)
		}
	}
	sh(script.String())
	printed := p.ruleSet(t)
	sh(undo.String())
	if got := p.ruleSet(t); got != before {
		t.Fatalf("the printed undo left:\n%s", got)
	}
	p.apply(t, c)
	if applied := p.ruleSet(t); applied != printed {
		t.Fatalf("the printed commands wrote:\n%s\nApply wrote:\n%s", printed, applied)
	}
}
