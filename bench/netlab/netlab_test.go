//go:build linux

package netlab_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"golang.org/x/sys/unix"
)

func newLab(t *testing.T) *netlab.Lab {
	t.Helper()
	testkit.NeedNetns(t, netlab.Available)
	l, err := netlab.New("qmt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	return l
}

// newPairLab is a new lab with one veth link "a"-"b" on subnet.
func newPairLab(t *testing.T, subnet string) (*netlab.Lab, *netlab.Link) {
	t.Helper()
	l := newLab(t)
	k, err := l.Pair("a", "b", subnet)
	if err != nil {
		t.Fatal(err)
	}
	return l, k
}

// listenUDP binds a UDP socket to addr:0 inside namespace ns.
func listenUDP(t *testing.T, l *netlab.Lab, ns string, addr netip.Addr) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := l.Do(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Room for every packet a test sends even while the reading goroutine
	// is starved of CPU (root may exceed net.core.rmem_max).
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 16<<20)
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// udpEcho runs a UDP echo server on addr:0 in ns until the test ends.
func udpEcho(t *testing.T, l *netlab.Lab, ns string, addr netip.Addr) netip.AddrPort {
	t.Helper()
	c := listenUDP(t, l, ns, addr)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// rtts measures n UDP round trips to an echo server and returns them
// sorted. A lost packet is retried after timeout.
func rtts(t *testing.T, c *net.UDPConn, to netip.AddrPort, n int, timeout time.Duration) []time.Duration {
	t.Helper()
	var out []time.Duration
	buf := make([]byte, 64)
	for i := 0; len(out) < n; i++ {
		if i > 4*n {
			t.Fatalf("only %d of %d round trips completed", len(out), n)
		}
		msg := []byte("rtt-" + strconv.Itoa(i))
		start := time.Now()
		if _, err := c.WriteToUDPAddrPort(msg, to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(start.Add(timeout))
		for {
			m, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // lost: retry
			}
			if bytes.Equal(buf[:m], msg) {
				out = append(out, time.Since(start))
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// counter counts packets per tag (first byte) received on c.
type counter struct {
	c     *net.UDPConn
	mu    sync.Mutex
	count map[byte]int
	seqs  map[byte][]uint32
	wg    sync.WaitGroup
}

func startCounter(t *testing.T, c *net.UDPConn) *counter {
	k := &counter{c: c, count: map[byte]int{}, seqs: map[byte][]uint32{}}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n < 5 {
				continue
			}
			k.mu.Lock()
			k.count[buf[0]]++
			k.seqs[buf[0]] = append(k.seqs[buf[0]], binary.BigEndian.Uint32(buf[1:5]))
			k.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); k.wg.Wait() })
	return k
}

func (k *counter) get(tag byte) (int, []uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.count[tag], slices.Clone(k.seqs[tag])
}

// send sends n tagged, numbered packets, pausing every 20 so neither the
// sender's nor the receiver's socket buffer overflows, then waits settle
// for stragglers and returns how many arrived.
func (k *counter) send(t *testing.T, from *net.UDPConn, to netip.AddrPort, tag byte, n int, settle time.Duration) int {
	t.Helper()
	msg := make([]byte, 100)
	msg[0] = tag
	for i := range n {
		binary.BigEndian.PutUint32(msg[1:5], uint32(i))
		if _, err := from.WriteToUDPAddrPort(msg, to); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			time.Sleep(200 * time.Microsecond)
		}
	}
	time.Sleep(settle)
	// A starved reading goroutine may not have read what already arrived:
	// wait until the socket's receive queue is empty and the count has
	// stopped moving, so a busy machine delays the answer instead of
	// changing it.
	deadline := time.Now().Add(10 * time.Second)
	got, _ := k.get(tag)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		now, _ := k.get(tag)
		if now == got && k.queued(t) == 0 {
			break
		}
		got = now
	}
	return got
}

// queued is how many bytes wait unread in the counter's socket (SIOCINQ).
func (k *counter) queued(t *testing.T) int {
	t.Helper()
	raw, err := k.c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioctlErr error
	if err := raw.Control(func(fd uintptr) {
		n, ioctlErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	}); err != nil {
		t.Fatal(err)
	}
	if ioctlErr != nil {
		t.Fatalf("SIOCINQ: %v", ioctlErr)
	}
	return n
}

func TestNetnsPairUDPEchoAcrossNamespaces(t *testing.T) {
	l, k := newPairLab(t, "10.77.1.0/24")
	if k.AddrA != netip.MustParseAddr("10.77.1.1") || k.AddrB != netip.MustParseAddr("10.77.1.2") {
		t.Fatalf("addresses %v %v", k.AddrA, k.AddrB)
	}
	for _, name := range []string{k.IfA, k.IfB} {
		if len(name) > 15 || !strings.HasPrefix(name, l.ID()) {
			t.Fatalf("interface name %q: want ≤ 15 bytes starting with %q", name, l.ID())
		}
	}
	for _, ns := range []string{k.NSA, k.NSB} {
		if !strings.HasPrefix(ns, l.ID()) {
			t.Fatalf("namespace name %q does not start with %q", ns, l.ID())
		}
	}

	echo := udpEcho(t, l, k.NSB, k.AddrB)
	c := listenUDP(t, l, k.NSA, k.AddrA)
	// The sockets are used here, from ordinary goroutines on ordinary
	// threads, yet their traffic crosses the link.
	if _, err := c.WriteToUDPAddrPort([]byte("hello"), echo); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "hello" || from != echo {
		t.Fatalf("echo: %q from %v, %v", buf[:n], from, err)
	}

	// The addresses exist only inside the namespaces.
	if rc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(k.AddrA, 0))); err == nil {
		rc.Close()
		t.Fatalf("bound %v in the root namespace: Do did not switch namespaces", k.AddrA)
	}

	// A second link can reuse namespace "a".
	k2, err := l.Pair("a", "c", "10.77.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if k2.NSA != k.NSA || k2.IfA == k.IfA {
		t.Fatalf("second link: ns %s (want %s), interface %s", k2.NSA, k.NSA, k2.IfA)
	}
	echo2 := udpEcho(t, l, k2.NSB, k2.AddrB)
	c2 := listenUDP(t, l, k2.NSA, k2.AddrA)
	if got := rtts(t, c2, echo2, 3, time.Second); len(got) != 3 {
		t.Fatal("no round trips over the second link")
	}
	out, err := l.Command(k.NSA, "ip", "-o", "addr", "show").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.77.1.1/24") || !strings.Contains(string(out), "10.77.2.1/24") {
		t.Fatalf("ip addr in %s: %s %v", k.NSA, out, err)
	}
}

func nsInode(t *testing.T) string {
	s, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNetnsDoSwitchesOnlyItsOwnThread(t *testing.T) {
	l, k := newPairLab(t, "10.77.3.0/24")
	runtime.LockOSThread()
	root := nsInode(t)
	runtime.UnlockOSThread()
	for range 20 {
		var inside string
		if err := l.Do(k.NSA, func() error { inside = nsInode(t); return nil }); err != nil {
			t.Fatal(err)
		}
		if inside == root {
			t.Fatal("Do ran fn in the root namespace")
		}
	}
	// No thread the scheduler hands out afterwards is still in the lab's
	// namespace.
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if nsInode(t) != root {
				bad.Add(1)
			}
			time.Sleep(time.Millisecond)
		}()
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d goroutines ran on a thread left in another namespace", bad.Load())
	}

	if err := l.Do(k.NSA, func() error { return errors.New("boom") }); err == nil || err.Error() != "boom" {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if err := l.Do("no-such-namespace", func() error { return nil }); err == nil {
		t.Fatal("Do into a missing namespace succeeded")
	}
	func() {
		defer func() {
			if p := recover(); p != "oops" {
				t.Fatalf("recovered %v, want the panic from fn", p)
			}
		}()
		l.Do(k.NSA, func() error { panic("oops") })
	}()
}

func TestNetnsLossDropsAMeasurableFraction(t *testing.T) {
	l, k := newPairLab(t, "10.77.4.0/24")
	rx := listenUDP(t, l, k.NSB, k.AddrB)
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	tx := listenUDP(t, l, k.NSA, k.AddrA)
	cnt := startCounter(t, rx)
	const n = 2000

	if got := cnt.send(t, tx, to, 1, n, 100*time.Millisecond); got != n {
		t.Fatalf("no loss configured: %d of %d arrived", got, n)
	}
	for i, pct := range []float64{30, 60} { // the second call replaces the first
		if err := k.SetLoss(pct); err != nil {
			t.Fatal(err)
		}
		got := cnt.send(t, tx, to, byte(2+i), n, 100*time.Millisecond)
		loss := 100 * float64(n-got) / n
		t.Logf("SetLoss(%v): %d of %d arrived, measured loss %.1f%%", pct, got, n, loss)
		if loss < pct-6 || loss > pct+6 {
			t.Fatalf("SetLoss(%v): measured %.1f%% loss", pct, loss)
		}
		// The counters restart with each replacement, so they count this
		// round's drops exactly.
		if dropped, _, err := k.Drops(); err != nil || dropped != uint64(n-got) {
			t.Fatalf("SetLoss(%v): iptables counted %d drops (%v), want %d", pct, dropped, err, n-got)
		}
	}
	for _, ns := range []string{k.NSA, k.NSB} {
		rules, err := k.Rules(ns)
		if err != nil {
			t.Fatal(err)
		}
		if c := strings.Count(rules, "statistic"); c != 2 || !strings.Contains(rules, "0.6") {
			t.Fatalf("%s: %d statistic rules, want 2 (udp, tcp) at 0.6:\n%s", ns, c, rules)
		}
	}
	if err := k.SetLoss(0); err != nil {
		t.Fatal(err)
	}
	if got := cnt.send(t, tx, to, 9, n, 100*time.Millisecond); got != n {
		t.Fatalf("after SetLoss(0): %d of %d arrived", got, n)
	}
	if err := k.SetLoss(101); err == nil {
		t.Fatal("SetLoss(101) accepted")
	}
}

func TestNetnsBlockUDP(t *testing.T) {
	l, k := newPairLab(t, "10.77.5.0/24")
	echo := udpEcho(t, l, k.NSB, k.AddrB)
	c := listenUDP(t, l, k.NSA, k.AddrA)
	rx := listenUDP(t, l, k.NSB, k.AddrB)
	cnt := startCounter(t, rx)
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()

	// A TCP listener in B, dialled from A, shows other traffic still flows.
	var tcpln net.Listener
	if err := l.Do(k.NSB, func() (err error) { tcpln, err = net.Listen("tcp", k.AddrB.String()+":0"); return }); err != nil {
		t.Fatal(err)
	}
	defer tcpln.Close()
	go func() {
		for {
			c, err := tcpln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("tcp ok"))
			c.Close()
		}
	}()

	for range 2 { // blocking twice is harmless
		if err := k.BlockUDP(true); err != nil {
			t.Fatal(err)
		}
	}
	if got := cnt.send(t, c, to, 1, 100, 200*time.Millisecond); got != 0 {
		t.Fatalf("UDP blocked, yet %d of 100 packets arrived", got)
	}
	if _, blocked, err := k.Drops(); err != nil || blocked != 100 {
		t.Fatalf("iptables counted %d blocked packets (%v), want 100", blocked, err)
	}
	var tc net.Conn
	if err := l.Do(k.NSA, func() (err error) { tc, err = net.DialTimeout("tcp", tcpln.Addr().String(), 5*time.Second); return }); err != nil {
		t.Fatalf("TCP with UDP blocked: %v", err)
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 6)
	if _, err := tc.Read(b); err != nil || string(b) != "tcp ok" {
		t.Fatalf("TCP with UDP blocked: %q %v", b, err)
	}
	tc.Close()

	if err := k.BlockUDP(false); err != nil {
		t.Fatal(err)
	}
	if got := cnt.send(t, c, to, 2, 100, 100*time.Millisecond); got != 100 {
		t.Fatalf("UDP unblocked, but %d of 100 packets arrived", got)
	}
	if got := rtts(t, c, echo, 3, time.Second); len(got) != 3 {
		t.Fatal("echo does not answer after unblocking")
	}
}

func TestNetnsDelayAddsToRoundTrip(t *testing.T) {
	l := newLab(t)
	testkit.NeedNetns(t, netlab.TUNAvailable)
	veth, err := l.Pair("va", "vb", "10.77.6.0/24")
	if err != nil {
		t.Fatal(err)
	}
	const delay = 20 * time.Millisecond
	k, err := l.DelayPair("a", "b", "10.77.7.0/24", delay, 0)
	if err != nil {
		t.Fatal(err)
	}
	base := rtts(t, listenUDP(t, l, veth.NSA, veth.AddrA), udpEcho(t, l, veth.NSB, veth.AddrB), 20, time.Second)
	echo := udpEcho(t, l, k.NSB, k.AddrB)
	c := listenUDP(t, l, k.NSA, k.AddrA)
	slow := rtts(t, c, echo, 20, time.Second)
	t.Logf("UDP RTT over veth: min %v median %v; over the emulator with %v one-way: min %v median %v max %v",
		base[0], base[10], delay, slow[0], slow[10], slow[19])
	if slow[0] < 2*delay {
		t.Fatalf("fastest round trip %v, want ≥ %v", slow[0], 2*delay)
	}
	if slow[10] > 2*delay+40*time.Millisecond {
		t.Fatalf("median round trip %v: far more than the %v configured", slow[10], 2*delay)
	}

	if err := k.SetDelay(2*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	fast := rtts(t, c, echo, 20, time.Second)
	t.Logf("after SetDelay(2ms): min %v median %v", fast[0], fast[10])
	if fast[0] < 4*time.Millisecond || fast[10] > 2*delay {
		t.Fatalf("after SetDelay(2ms): min %v median %v", fast[0], fast[10])
	}
	if err := veth.SetDelay(time.Millisecond, 0); err == nil {
		t.Fatal("SetDelay on a veth link succeeded")
	}
}

func TestNetnsEmulatorLossOrderAndQueueBound(t *testing.T) {
	l := newLab(t)
	testkit.NeedNetns(t, netlab.TUNAvailable)
	k, err := l.DelayPair("a", "b", "10.77.8.0/24", time.Millisecond, 30)
	if err != nil {
		t.Fatal(err)
	}
	rx := listenUDP(t, l, k.NSB, k.AddrB)
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	tx := listenUDP(t, l, k.NSA, k.AddrA)
	cnt := startCounter(t, rx)
	const n = 2000

	got := cnt.send(t, tx, to, 1, n, 200*time.Millisecond)
	loss := 100 * float64(n-got) / n
	ab, _, _ := k.EmuStats()
	t.Logf("emulator loss 30%%: %d of %d arrived (%.1f%% lost); A→B stats %+v", got, n, loss, ab)
	if loss < 24 || loss > 36 {
		t.Fatalf("emulator loss 30%%: measured %.1f%%", loss)
	}

	// Jitter larger than the packet spacing must not reorder.
	if err := k.SetEmuLoss(0); err != nil {
		t.Fatal(err)
	}
	if err := k.SetDelay(2*time.Millisecond, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got := cnt.send(t, tx, to, 2, 500, 200*time.Millisecond); got != 500 {
		t.Fatalf("with jitter and no loss: %d of 500 arrived", got)
	}
	if _, seqs := cnt.get(2); !slices.IsSorted(seqs) {
		t.Fatal("the emulator reordered packets")
	}

	// A burst far beyond the queue is cut at the tail, not buffered: with
	// 1 s of delay nothing leaves the queue while the burst goes in.
	if err := k.SetDelay(time.Second, 0); err != nil {
		t.Fatal(err)
	}
	before, _, _ := k.EmuStats()
	start := time.Now()
	got = cnt.send(t, tx, to, 3, 4*netlab.QueuePackets, 0)
	sent := time.Since(start)
	time.Sleep(time.Second + 300*time.Millisecond - sent)
	after, _, _ := k.EmuStats()
	fwd := after.Forwarded - before.Forwarded
	got, _ = cnt.get(3)
	t.Logf("burst of %d packets in %v into a %d-packet queue with 1s delay: forwarded %d, queue drops %d, received %d",
		4*netlab.QueuePackets, sent.Round(time.Millisecond), netlab.QueuePackets, fwd, after.QueueDrops, got)
	if after.QueueDrops == 0 || fwd > netlab.QueuePackets+netlab.QueuePackets/2 {
		t.Fatalf("queue not bounded: forwarded %d, drops %d", fwd, after.QueueDrops)
	}
}

func TestNetnsCloseRemovesEverything(t *testing.T) {
	testkit.NeedNetns(t, netlab.Available)
	// A namespace left by a lab whose process is gone is swept by New.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := "qmz0000.nl" + strconv.Itoa(dead.Process.Pid) + ".x"
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("%s %v", out, err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", stale).Run() })

	goroutines := testkit.TakeBaseline()
	l, err := netlab.New("qmc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if netnsList(t, stale) {
		t.Fatalf("stale namespace %s of a dead process survived New", stale)
	}
	k, err := l.Pair("a", "b", "10.77.9.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := k.SetLoss(10); err != nil {
		t.Fatal(err)
	}
	if err := k.BlockUDP(true); err != nil {
		t.Fatal(err)
	}
	if netlab.TUNAvailable() == nil {
		d, err := l.DelayPair("c", "d", "10.77.10.0/24", 5*time.Millisecond, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.SetLoss(5); err != nil {
			t.Fatal(err)
		}
	}
	nss := l.Namespaces()
	if len(nss) < 2 {
		t.Fatalf("namespaces %v", nss)
	}
	for _, ns := range nss {
		if !netnsList(t, ns) {
			t.Fatalf("namespace %s not listed while the lab is open", ns)
		}
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, ns := range nss {
		if netnsList(t, ns) {
			t.Fatalf("namespace %s survived Close", ns)
		}
	}
	for _, args := range [][]string{{"ip", "-o", "link", "show"}, {"ip", "netns", "list"}, {"iptables-save"}} {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
		if strings.Contains(string(out), l.ID()) {
			t.Fatalf("%v still mentions %s after Close:\n%s", args, l.ID(), out)
		}
	}
	if _, err := l.Pair("e", "f", "10.77.11.0/24"); err == nil {
		t.Fatal("Pair on a closed lab succeeded")
	}
	if err := k.SetLoss(1); err == nil {
		t.Fatal("SetLoss on a closed lab succeeded")
	}
	goroutines.Check(t) // the emulator stopped
}

func netnsList(t *testing.T, name string) bool {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}
