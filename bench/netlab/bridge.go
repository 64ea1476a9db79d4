package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
)

// Bridge is a namespace holding a Linux bridge that other namespaces of
// the lab join through veth pairs: the switch of a small cluster. The
// bridge has the subnet's first address, which is the default gateway of
// every namespace attached to it.
type Bridge struct {
	NS     string     // the namespace holding the bridge
	Dev    string     // the bridge device in NS
	Addr   netip.Addr // the bridge's own address
	Prefix netip.Prefix

	lab  *Lab
	mu   sync.Mutex
	last netip.Addr // the last address handed out
}

// Bridge creates namespace name holding a bridge with the first host
// address of subnet (an IPv4 prefix such as "10.88.0.0/24").
func (l *Lab) Bridge(name, subnet string) (*Bridge, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("netlab: lab is closed")
	}
	prefix, gw, _, err := hosts(subnet)
	if err != nil {
		return nil, err
	}
	ns, err := l.ensureNS(name)
	if err != nil {
		return nil, err
	}
	dev := l.id + "br"
	batch := fmt.Sprintf("link add %s type bridge\nlink set dev %s up\naddr add %s/%d dev %s\n", dev, dev, gw, prefix.Bits(), dev)
	if err := runIn(batch, "ip", "-n", ns, "-batch", "-"); err != nil {
		return nil, err
	}
	return &Bridge{NS: ns, Dev: dev, Addr: gw, Prefix: prefix, lab: l, last: gw}, nil
}

// Attach creates namespace name (or reuses the lab's namespace of that
// name) and plugs it into the bridge: a veth whose end in the namespace is
// ifname, the next free address of the subnet, and a default route via
// the bridge. It returns the namespace's full name and its address.
func (b *Bridge) Attach(name, ifname string) (string, netip.Addr, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	addr := b.last.Next()
	if !b.Prefix.Contains(addr) || !b.Prefix.Contains(addr.Next()) { // the last address is broadcast
		return "", netip.Addr{}, fmt.Errorf("netlab: bridge %s: no address left in %s for %q", b.Dev, b.Prefix, name)
	}
	l := b.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return "", netip.Addr{}, errors.New("netlab: lab is closed")
	}
	ns, err := l.ensureNS(name)
	if err != nil {
		return "", netip.Addr{}, err
	}
	n, err := l.nextIfIndex()
	if err != nil {
		return "", netip.Addr{}, err
	}
	port := fmt.Sprintf("%sb%d", l.id, n)
	if err := run("ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", b.NS); err != nil {
		return "", netip.Addr{}, err
	}
	if err := run("ip", "-n", b.NS, "link", "set", port, "master", b.Dev, "up"); err != nil {
		return "", netip.Addr{}, err
	}
	batch := fmt.Sprintf("link set dev %s up\naddr add %s/%d dev %s\nroute add default via %s\n", ifname, addr, b.Prefix.Bits(), ifname, b.Addr)
	if err := runIn(batch, "ip", "-n", ns, "-batch", "-"); err != nil {
		return "", netip.Addr{}, err
	}
	b.last = addr
	return ns, addr, nil
}

// etcNetnsDir is where `ip netns exec` finds the files it bind-mounts over
// /etc for the processes it starts: /etc/netns/<namespace>/hosts becomes
// their /etc/hosts.
const etcNetnsDir = "/etc/netns"

// SetHosts makes content the /etc/hosts of every process started in
// namespace ns through `ip netns exec` ([Lab.Command]). Close removes it.
func (l *Lab) SetHosts(ns, content string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.nsSet[ns] {
		return fmt.Errorf("netlab: %q is not a namespace of this lab", ns)
	}
	dir := filepath.Join(etcNetnsDir, ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	tmp := filepath.Join(dir, ".hosts.tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "hosts")); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	return nil
}

// removeEtc deletes /etc/netns/<ns>, if there is one.
func removeEtc(ns string) error {
	if err := os.RemoveAll(filepath.Join(etcNetnsDir, ns)); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	return nil
}
