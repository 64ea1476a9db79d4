//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var (
	availOnce sync.Once
	availErr  error
	tunOnce   sync.Once
	tunErr    error
)

// Available reports why a lab cannot be built on this machine, or nil if
// it can: it needs root, network namespace support, and the `ip`,
// `iptables` and `iptables-restore` commands. Tests call
// t.Skip(netlab.Available()) when it is not nil.
func Available() error {
	availOnce.Do(func() { availErr = available() })
	return availErr
}

func available() error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("netlab: needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces, veth, TUN and iptables); running as uid %d", uid)
	}
	for _, c := range []struct{ cmd, pkg string }{{"ip", "iproute2"}, {"iptables", "iptables"}, {"iptables-restore", "iptables"}} {
		if _, err := exec.LookPath(c.cmd); err != nil {
			return fmt.Errorf("netlab: %s not found in PATH (install the %s package, e.g. apt-get install -y %s)", c.cmd, c.pkg, c.pkg)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("netlab: kernel without network namespace support: %v", err)
	}
	// Prove that this process may really create a namespace (a container
	// may run as uid 0 without CAP_SYS_ADMIN): unshare on a throw-away
	// thread, which the runtime ends because it is never unlocked.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- unix.Unshare(unix.CLONE_NEWNET)
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("netlab: cannot create a network namespace: unshare(CLONE_NEWNET): %v", err)
	}
	out, err := exec.Command("iptables", "-w", "-S", "INPUT").CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: iptables does not work here: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// TUNAvailable reports why [Lab.DelayPair] cannot work here (no
// /dev/net/tun), or nil.
func TUNAvailable() error {
	if err := Available(); err != nil {
		return err
	}
	tunOnce.Do(func() {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			tunErr = fmt.Errorf("netlab: no TUN support: open /dev/net/tun: %v", err)
			return
		}
		unix.Close(fd)
	})
	return tunErr
}

// Do runs fn on an OS thread switched into network namespace ns (a name
// from a [Link] or any name under /var/run/netns, or an absolute path to a
// namespace file) and returns its error. Sockets fn creates stay in ns for
// their whole life and may be used from any goroutine afterwards; use
// literal IP addresses in fn (name resolution may run elsewhere).
// Goroutines started by fn do not run in ns. A panic in fn is re-raised in
// the caller.
//
// The thread is never handed back to the scheduler: Do switches it back
// to its original namespace but leaves it locked, so the runtime
// terminates it when fn's goroutine ends rather than let another goroutine
// run in whatever state fn left it.
func (l *Lab) Do(ns string, fn func() error) error {
	path := ns
	if !strings.HasPrefix(ns, "/") {
		if ns == "" || strings.Contains(ns, "/") {
			return fmt.Errorf("netlab: bad namespace name %q", ns)
		}
		path = netnsDir + "/" + ns
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netlab: namespace %s: %w", ns, err)
	}
	defer unix.Close(target)

	type result struct {
		err      error
		panicked bool
		val      any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread, on any path: see above.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{err: fmt.Errorf("netlab: current namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("netlab: setns %s: %w", ns, err)}
			return
		}
		var r result
		func() {
			defer func() {
				if p := recover(); p != nil {
					r = result{panicked: true, val: p}
				}
			}()
			r.err = fn()
		}()
		// Best effort; if it fails the thread still dies with the
		// goroutine.
		unix.Setns(orig, unix.CLONE_NEWNET)
		done <- r
	}()
	r := <-done
	if r.panicked {
		panic(r.val)
	}
	return r.err
}

// openTUN creates TUN device name (IFF_TUN, no packet information) in the
// calling thread's network namespace and returns it as a pollable file:
// Read and Write block through the runtime poller and Close unblocks
// them and deletes the device. Call it inside [Lab.Do].
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("netlab: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlab: TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlab: TUNSETIFF %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "tun:"+name)
	if f == nil {
		unix.Close(fd)
		return nil, errors.New("netlab: os.NewFile failed for TUN")
	}
	return f, nil
}

// disableIPv6 keeps the kernel from sending router solicitations and MLD
// reports over a link. Call it inside [Lab.Do]. Best effort.
func disableIPv6(ifname string) {
	os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0)
}

// killWait bounds how long killIn waits for killed processes to exit.
const killWait = time.Minute

// killIn kills (SIGKILL) every process inside namespace ns, which would
// otherwise keep it alive, unnamed, after it is deleted, and waits until
// they have exited (a pidfd turns readable then; zombies count as
// exited). It returns how many it killed.
func killIn(ns string) (int, error) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return 0, fmt.Errorf("netlab: ip netns pids %s: %w", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	n, err := KillWait(pids...)
	if err != nil {
		return n, fmt.Errorf("netlab: processes in %s: %w", ns, err)
	}
	return n, nil
}

// KillWait kills (SIGKILL) the processes pids and waits until they have
// exited (a pidfd turns readable then; zombies count as exited), for at
// most a minute. It returns how many it killed; pids already gone are
// skipped.
func KillWait(pids ...int) (int, error) {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, pid := range pids {
		// The pidfd first: it names this process even if the pid is
		// reused after it dies.
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // already gone
		}
		if unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) != nil {
			unix.Close(fd)
			continue
		}
		fds = append(fds, fd)
	}
	deadline := time.Now().Add(killWait)
	for _, fd := range fds {
		for {
			left := time.Until(deadline)
			if left <= 0 {
				return len(fds), fmt.Errorf("still running %v after SIGKILL", killWait)
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(left.Milliseconds())+1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return len(fds), fmt.Errorf("waiting for a killed process: %w", err)
			}
			if n > 0 {
				break
			}
		}
	}
	return len(fds), nil
}
