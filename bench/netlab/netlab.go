// Package netlab builds small throw-away test networks out of Linux
// network namespaces, so that tests can put a real lossy, slow or broken
// link between two quicmesh sidecars without touching the host's network.
//
// # Model
//
// A [Lab] owns every object it creates. [Lab.Pair] makes two namespaces
// (or reuses ones the lab already made under the same name) joined by a
// veth pair, with one address each from a subnet and lo up in both.
// [Lab.DelayPair] makes the same shape, but instead of a veth each
// namespace gets a TUN device and a goroutine in the test process carries
// packets between the two TUN devices: the user-space link emulator
// (below). Either way the resulting [Link] names both namespaces and both
// addresses, and only traffic between those namespaces crosses it: the
// namespaces have no route anywhere else.
//
// [Lab.Bridge] makes a namespace holding a Linux bridge, and
// [Bridge.Attach] plugs further namespaces into it (a veth each, the next
// address of the subnet, a default route via the bridge): the switch of a
// small cluster (bench/cluster). [Lab.SetHosts] gives a namespace its own
// /etc/hosts for the processes `ip netns exec` starts there.
//
// Code runs "inside" a namespace in two ways:
//
//   - [Lab.Do] runs a function on an OS thread switched into the namespace
//     with setns(2). Sockets created there belong to that namespace for
//     their whole life, even when later used from other goroutines and
//     threads; this is how a test binds a sidecar's UDP socket in a
//     namespace while everything else stays in the root namespace.
//   - [Lab.Command] runs a program under `ip netns exec`.
//
// # Impairments
//
// [Link.SetLoss] drops a random fraction of UDP and TCP packets arriving
// over the link in both namespaces (iptables `statistic` match, INPUT, one
// user-defined chain per interface so a new call replaces the old rule
// atomically). [Link.BlockUDP] drops every UDP packet arriving over the
// link. Both work on veth and emulated links, and [Link.Drops] reads
// their counters. Links are configured with gso_max_segs 1, so the kernel
// splits UDP GSO and TCP TSO super-packets before the link and the rules
// judge (and drop) single packets rather than bursts.
//
// Delay needs the emulator because `tc netem` is not available everywhere
// (it needs the sch_netem kernel module). Each direction of an emulated
// link is one reader goroutine and one writer goroutine: the reader takes
// a packet from the source TUN, drops it with the emulator's loss
// probability, stamps it with a due time (arrival + delay + uniform
// jitter, never earlier than the previous packet's due time, so order is
// preserved even with jitter) and puts it in a bounded FIFO of
// [QueuePackets] packets (drop-tail: a full queue drops the new packet, so
// memory stays bounded at QueuePackets × 2 KiB per direction); the writer
// sleeps until the head packet is due and writes it to the other TUN. With
// a constant delay the FIFO is already ordered by due time, so it doubles
// as the timing wheel. Timer resolution adds up to about a millisecond.
// The delay, jitter and loss of an emulated link can be changed while it
// runs ([Link.SetDelay], [Link.SetEmuLoss]); [Link.EmuStats] counts what
// the emulator forwarded and dropped. The TUN MTU is 1500.
//
// # Names and clean-up
//
// Every name carries the lab's id, the given prefix plus a random suffix
// (e.g. "qm3f9c"), so parallel runs never clash: namespaces are
// "<id>.nl<pid>.<name>", interfaces "<id>v<n>a"/"<id>t<n>a" (at most 15
// bytes). Nothing is created in the root namespace: interfaces and
// iptables rules live inside the lab's namespaces and die with them.
// [Lab.Close] stops the emulators (closing a TUN file descriptor deletes
// its device), deletes the namespaces and their /etc/netns files and is
// idempotent; tests call it from t.Cleanup. [Lab.KillAll] kills whatever
// still runs in the lab's namespaces (which would keep one alive, unnamed,
// after Close). A process killed before Close (a test timeout) leaves its
// namespaces behind; [New] deletes those whose owning process (the pid in
// the name) no longer exists, with the processes in them and their
// /etc/netns files.
//
// Everything needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2 and
// iptables; [Available] says why the lab cannot work here, for t.Skip.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/var/run/netns"

// Lab is a set of namespaces, links and rules created together and
// removed together by Close. Its methods are safe for concurrent use.
type Lab struct {
	id  string
	pid int

	mu     sync.Mutex
	closed bool
	ns     []string // full namespace names, in creation order
	nsSet  map[string]bool
	links  []*Link
	nextIf int
}

var (
	prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	staleRE  = regexp.MustCompile(`^[a-z][a-z0-9]*\.nl([0-9]+)\.[A-Za-z0-9_-]+$`)
)

// New starts an empty lab. prefix (lower-case letters and digits, at most
// 6 bytes; "" means "qm") starts every name the lab gives out; a random
// suffix makes them unique. New also deletes namespaces left behind by
// labs of processes that no longer exist.
func New(prefix string) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if prefix == "" {
		prefix = "qm"
	}
	if !prefixRE.MatchString(prefix) || len(prefix) > 6 {
		return nil, fmt.Errorf("netlab: prefix %q: want 1-6 lower-case letters and digits, starting with a letter", prefix)
	}
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	SweepStale()
	return &Lab{id: prefix + hex.EncodeToString(b[:]), pid: os.Getpid(), nsSet: map[string]bool{}}, nil
}

// ID is the lab's unique name prefix; every namespace and interface name
// the lab creates contains it.
func (l *Lab) ID() string { return l.id }

// Namespaces lists the full names of the namespaces the lab created.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ns...)
}

// nsName is the full namespace name for a short name.
func (l *Lab) nsName(name string) string {
	return l.id + ".nl" + strconv.Itoa(l.pid) + "." + name
}

// ensureNS creates the namespace for name (lo up) unless the lab already
// has it. Called with l.mu held.
func (l *Lab) ensureNS(name string) (string, error) {
	if !nameRE.MatchString(name) {
		return "", fmt.Errorf("netlab: namespace name %q: want 1-32 of [A-Za-z0-9_-]", name)
	}
	full := l.nsName(name)
	if l.nsSet[full] {
		return full, nil
	}
	if err := run("ip", "netns", "add", full); err != nil {
		return "", err
	}
	l.ns = append(l.ns, full)
	l.nsSet[full] = true
	if err := run("ip", "-n", full, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return full, nil
}

// nextIfIndex reserves a link number for interface names. Called with
// l.mu held.
func (l *Lab) nextIfIndex() (int, error) {
	if l.nextIf > 999 {
		return 0, errors.New("netlab: too many links in one lab")
	}
	n := l.nextIf
	l.nextIf++
	return n, nil
}

// Close removes everything the lab created: it stops link emulators
// (which deletes their TUN devices), then deletes every namespace, which
// takes its interfaces and iptables rules with it. A namespace whose
// sockets are still open lives on, unnamed, until they are closed, so
// close sidecars and sockets first. Close is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	links, nss := l.links, l.ns
	l.links, l.ns = nil, nil
	l.mu.Unlock()

	var errs []error
	for _, k := range links {
		if k.emu != nil {
			k.emu.close()
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := run("ip", "netns", "delete", nss[i]); err != nil {
			if _, serr := os.Stat(netnsDir + "/" + nss[i]); serr == nil {
				errs = append(errs, err)
			}
		}
		if err := removeEtc(nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Command returns a command that runs name with args inside namespace ns
// (`ip netns exec ns name args...`).
func (l *Lab) Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// run executes a command and folds its output into the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runIn executes a command with stdin.
func runIn(stdin string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: %s %s: %v: %s\ninput:\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)), stdin)
	}
	return nil
}

// SweepStale deletes the namespaces named by a lab whose process is gone
// (killed before it could run Close), with the processes in them and
// their /etc/netns files. New calls it.
func SweepStale() {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		m := staleRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			killIn(e.Name())
			run("ip", "netns", "delete", e.Name())
			removeEtc(e.Name())
		}
	}
}

// KillAll kills (SIGKILL) every process inside the lab's namespaces,
// whoever started it, waits until they have exited, and returns how many
// it killed. Close does not,
// so that a caller stops its own processes gracefully first.
func (l *Lab) KillAll() (int, error) {
	var errs []error
	total := 0
	for _, ns := range l.Namespaces() {
		n, err := killIn(ns)
		total += n
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}

// hosts returns the first two host addresses of an IPv4 subnet such as
// "10.77.1.0/24" (10.77.1.1 and 10.77.1.2).
func hosts(subnet string) (netip.Prefix, netip.Addr, netip.Addr, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return p, netip.Addr{}, netip.Addr{}, fmt.Errorf("netlab: subnet: %w", err)
	}
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() > 30 {
		return p, netip.Addr{}, netip.Addr{}, fmt.Errorf("netlab: subnet %s: want an IPv4 prefix of /30 or shorter", p)
	}
	a := p.Addr().Next()
	return p, a, a.Next(), nil
}
