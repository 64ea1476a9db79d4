package netlab

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Link joins two namespaces of a lab. A is the first host address of the
// subnet, B the second.
type Link struct {
	NSA, NSB     string // full namespace names, for Do, Command, ip -n
	AddrA, AddrB netip.Addr
	Prefix       netip.Prefix
	IfA, IfB     string // interface names in NSA and NSB

	lab *Lab
	emu *emulator // nil for a veth link

	mu     sync.Mutex // serialises iptables changes
	hooked [2]bool    // per side: the chains exist and INPUT jumps to them
}

// Pair creates namespaces nameA and nameB (or reuses the lab's namespaces
// of those names) and joins them with a veth pair; A gets the first host
// address of subnet (an IPv4 prefix such as "10.77.1.0/24"), B the second.
func (l *Lab) Pair(nameA, nameB, subnet string) (*Link, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, err := l.newLink(nameA, nameB, subnet, 'v')
	if err != nil {
		return nil, err
	}
	if err := run("ip", "link", "add", k.IfA, "netns", k.NSA, "type", "veth", "peer", "name", k.IfB, "netns", k.NSB); err != nil {
		return nil, err
	}
	if err := k.configure(); err != nil {
		return nil, err
	}
	l.links = append(l.links, k)
	return k, nil
}

// DelayPair is Pair with the user-space link emulator in place of the
// veth: each direction delays every packet by delay and drops lossPct per
// cent of them at random (see the package documentation). It needs
// /dev/net/tun ([TUNAvailable]).
func (l *Lab) DelayPair(nameA, nameB, subnet string, delay time.Duration, lossPct float64) (*Link, error) {
	if delay < 0 {
		return nil, fmt.Errorf("netlab: negative delay %v", delay)
	}
	if err := checkPct(lossPct); err != nil {
		return nil, err
	}
	if err := TUNAvailable(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, err := l.newLink(nameA, nameB, subnet, 't')
	if err != nil {
		return nil, err
	}
	var tunA, tunB = openInNS(l, k.NSA, k.IfA), openInNS(l, k.NSB, k.IfB)
	if tunA.err != nil || tunB.err != nil {
		tunA.close()
		tunB.close()
		return nil, errors.Join(tunA.err, tunB.err)
	}
	if err := k.configure(); err != nil {
		tunA.close()
		tunB.close()
		return nil, err
	}
	k.emu = startEmulator(tunA.f, tunB.f, delay, lossPct)
	l.links = append(l.links, k)
	return k, nil
}

// newLink validates names and subnet, creates the namespaces and names the
// interfaces. Called with l.mu held.
func (l *Lab) newLink(nameA, nameB, subnet string, kind byte) (*Link, error) {
	if l.closed {
		return nil, errors.New("netlab: lab is closed")
	}
	if nameA == nameB {
		return nil, fmt.Errorf("netlab: link from namespace %q to itself", nameA)
	}
	prefix, a, b, err := hosts(subnet)
	if err != nil {
		return nil, err
	}
	nsA, err := l.ensureNS(nameA)
	if err != nil {
		return nil, err
	}
	nsB, err := l.ensureNS(nameB)
	if err != nil {
		return nil, err
	}
	n, err := l.nextIfIndex()
	if err != nil {
		return nil, err
	}
	return &Link{
		NSA: nsA, NSB: nsB, AddrA: a, AddrB: b, Prefix: prefix,
		IfA: fmt.Sprintf("%s%c%da", l.id, kind, n), IfB: fmt.Sprintf("%s%c%db", l.id, kind, n),
		lab: l,
	}, nil
}

// configure addresses both ends and brings them up. gso_max_segs 1 makes
// the kernel segment UDP GSO and TCP TSO super-packets before they reach
// the link, so loss rules (which judge one skb at a time) drop single
// packets, not bursts of up to 64. A TUN device drops what does not fit
// its ring of txqueuelen packets while the emulator is not reading; make
// it as deep as the emulator's queue.
func (k *Link) configure() error {
	for _, s := range k.sides() {
		batch := fmt.Sprintf("link set dev %s mtu 1500 gso_max_segs 1 txqueuelen %d up\naddr add %s/%d dev %s\n", s.ifc, QueuePackets, s.addr, k.Prefix.Bits(), s.ifc)
		if err := runIn(batch, "ip", "-n", s.ns, "-batch", "-"); err != nil {
			return err
		}
	}
	return nil
}

type side struct {
	ns, ifc string
	addr    netip.Addr
}

func (k *Link) sides() [2]side {
	return [2]side{{k.NSA, k.IfA, k.AddrA}, {k.NSB, k.IfB, k.AddrB}}
}

func checkPct(pct float64) error {
	if math.IsNaN(pct) || pct < 0 || pct > 100 {
		return fmt.Errorf("netlab: loss %v%%: want 0 to 100", pct)
	}
	return nil
}

// SetLoss makes each namespace drop pct per cent (0 to 100) of the UDP and
// TCP packets it receives over the link, independently at random, so each
// direction loses pct per cent. A new call replaces the previous rate; 0
// removes the rule.
func (k *Link) SetLoss(pct float64) error {
	if err := checkPct(pct); err != nil {
		return err
	}
	var rules []string
	if pct > 0 {
		p := fmt.Sprintf("%.6f", pct/100)
		for _, proto := range []string{"udp", "tcp"} {
			rules = append(rules, "-p "+proto+" -m statistic --mode random --probability "+p+" -j DROP")
		}
	}
	return k.setChain("nlloss", rules)
}

// BlockUDP drops (on) or lets through (off) every UDP packet crossing the
// link, in both directions; other protocols are unaffected. Senders get
// no ICMP error: the packets just vanish.
func (k *Link) BlockUDP(on bool) error {
	var rules []string
	if on {
		rules = []string{"-p udp -j DROP"}
	}
	return k.setChain("nlblock", rules)
}

// Rules returns the iptables rules (iptables -S) of namespace ns, for
// diagnostics.
func (k *Link) Rules(ns string) (string, error) {
	out, err := k.lab.Command(ns, "iptables", "-w", "-S").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("netlab: iptables -S in %s: %v: %s", ns, err, out)
	}
	return string(out), nil
}

// setChain replaces the contents of chain <name>-<interface> in both
// namespaces with rules, atomically per namespace (one iptables-restore
// --noflush, which flushes a declared user chain). The first call also
// creates both chains and the INPUT rules that jump to them for packets
// from the link's interface.
func (k *Link) setChain(name string, rules []string) error {
	k.lab.mu.Lock()
	closed := k.lab.closed
	k.lab.mu.Unlock()
	if closed {
		return errors.New("netlab: lab is closed")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, s := range k.sides() {
		var b strings.Builder
		b.WriteString("*filter\n")
		chain := name + "-" + s.ifc
		if !k.hooked[i] {
			for _, c := range []string{"nlblock", "nlloss"} {
				fmt.Fprintf(&b, ":%s-%s - [0:0]\n", c, s.ifc)
			}
			for _, c := range []string{"nlblock", "nlloss"} {
				fmt.Fprintf(&b, "-A INPUT -i %s -j %s-%s\n", s.ifc, c, s.ifc)
			}
		} else {
			fmt.Fprintf(&b, ":%s - [0:0]\n", chain)
		}
		for _, r := range rules {
			fmt.Fprintf(&b, "-A %s %s\n", chain, r)
		}
		b.WriteString("COMMIT\n")
		if err := runIn(b.String(), "ip", "netns", "exec", s.ns, "iptables-restore", "-w", "--noflush"); err != nil {
			return err
		}
		k.hooked[i] = true
	}
	return nil
}

// Drops returns how many packets the link's [Link.SetLoss] and
// [Link.BlockUDP] rules have dropped, summed over both namespaces. The
// counters restart whenever a call replaces the rules.
func (k *Link) Drops() (loss, blocked uint64, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, s := range k.sides() {
		if !k.hooked[i] {
			continue
		}
		for _, c := range []struct {
			name string
			sum  *uint64
		}{{"nlloss", &loss}, {"nlblock", &blocked}} {
			out, err := k.lab.Command(s.ns, "iptables", "-w", "-L", c.name+"-"+s.ifc, "-v", "-n", "-x").CombinedOutput()
			if err != nil {
				return 0, 0, fmt.Errorf("netlab: iptables -L in %s: %v: %s", s.ns, err, out)
			}
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) < 3 || f[2] != "DROP" {
					continue
				}
				n, err := strconv.ParseUint(f[0], 10, 64)
				if err != nil {
					return 0, 0, fmt.Errorf("netlab: iptables counters in %s: %q", s.ns, line)
				}
				*c.sum += n
			}
		}
	}
	return loss, blocked, nil
}
