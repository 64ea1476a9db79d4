package transport

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The port-unreachable probe: a faster signal than silence for a peer
// whose process is gone.
//
// When a peer's process dies (kill -9, a crash) its host answers every
// datagram to the freed port with ICMP port unreachable. quic-go reads
// and writes through one unconnected socket for every peer, on which
// Linux does not report ICMP errors at all; asking for them there
// (IP_RECVERR) would make the socket's next read fail, and quic-go
// closes the whole transport on such an error. So the probe uses a socket
// of its own, connected to the peer's address, on which the kernel
// reports the ICMP error to the next read as ECONNREFUSED: it sends one
// empty datagram (quic-go drops an empty datagram before looking at it,
// so a live peer spends nothing on it) and waits for that error.
//
// The signal is positive only: ICMP may be filtered or rate-limited on a
// real network (Linux limits port-unreachable messages per destination,
// loopback excepted), and then the probe learns nothing and the caller's
// timers decide as before. An ICMP error must match the probe socket's
// own ephemeral port and address pair, so an off-path attacker cannot
// easily forge one; an on-path one can drop every packet anyway.
//
// Peers reached through a gateway ("name@gateway") are not probed: the
// gateway relays flows by their Initial and counts what it cannot read
// as dropped, and its port being open says nothing about the peer.

// errPortUnreachable is the probe's finding.
var errPortUnreachable = errors.New("the peer's host answered ICMP port unreachable: nothing listens on its port")

// ReasonUnreachable is the PeerFailure and DialError reason of a peer
// whose host answered ICMP port unreachable (its process is gone, or a
// firewall rejects UDP to it).
const ReasonUnreachable = "unreachable"

// probeUnreachable sends an empty datagram to addr and reports whether
// the peer's host answered port unreachable within wait (or until ctx
// ends). Errors other than ECONNREFUSED (no route, no socket to spare)
// are no finding: the caller's timers decide.
func probeUnreachable(ctx context.Context, addr *net.UDPAddr, wait time.Duration) bool {
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	// The wait is armed before ctx can cut it short: ctx may already be
	// done (the dial beside the probe was refused within a round trip),
	// and a cut made first would be overwritten, holding the dial's
	// callers for all of wait.
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return false
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write(nil); err != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	// Nothing but an error can arrive: a QUIC endpoint never answers an
	// empty datagram. Anything else read is ignored until the deadline.
	var buf [64]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}
}

// probeSocketsReachPeers reports whether a socket this process opens
// now (the probe's) lives in the same network namespace as udp, the
// endpoint's socket: a probe sent from another namespace would reach
// another host, whose closed port says nothing about the peer (tests
// and socket activation hand the endpoint a socket made in a namespace
// of their own). The namespaces are compared by their inodes; a socket
// whose namespace cannot be read (SIOCGSKNS needs CAP_NET_ADMIN) counts
// as the process's own only if the endpoint bound it itself.
func probeSocketsReachPeers(udp *net.UDPConn, boundHere bool) bool {
	rc, err := udp.SyscallConn()
	if err != nil {
		return false
	}
	nsfd, ierr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nsfd, ierr = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) }); err != nil {
		return false
	}
	if ierr != nil {
		return boundHere
	}
	defer unix.Close(nsfd)
	var sock, self unix.Stat_t
	if unix.Fstat(nsfd, &sock) != nil || unix.Stat("/proc/self/ns/net", &self) != nil {
		return boundHere
	}
	return sock.Dev == self.Dev && sock.Ino == self.Ino
}
