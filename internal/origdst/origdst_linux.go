//go:build linux

package origdst

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from
// <linux/netfilter_ipv6/ip6_tables.h>, which x/sys/unix does not export.
// It has the same value as SO_ORIGINAL_DST but is read at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// Destination returns the original destination of c, a connection
// accepted on a listener that iptables' nat REDIRECT (or DNAT) delivered
// to: SO_ORIGINAL_DST for IPv4 (also on a dual-stack socket carrying
// IPv4), IP6T_SO_ORIGINAL_DST for IPv6. The error wraps ErrNotRedirected
// when the connection was not rewritten.
func Destination(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("origdst: local address %v is not TCP", c.LocalAddr())
	}
	localAP := local.AddrPort()
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("origdst: %w", err)
	}
	var dst netip.AddrPort
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		if localAP.Addr().Unmap().Is4() {
			dst, opErr = original4(fd)
		} else {
			dst, opErr = original6(fd)
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("origdst: %w", err)
	}
	if errors.Is(opErr, unix.ENOENT) {
		// conntrack knows no such connection: nothing rewrote it.
		return netip.AddrPort{}, fmt.Errorf("origdst: %v → %v: %w", c.RemoteAddr(), localAP, ErrNotRedirected)
	}
	if opErr != nil {
		return netip.AddrPort{}, fmt.Errorf("origdst: %v → %v: %w", c.RemoteAddr(), localAP, opErr)
	}
	// conntrack also tracks connections no rule rewrote; for those the
	// original destination is where the connection is now.
	if dst.Addr().Unmap() == localAP.Addr().Unmap() && dst.Port() == localAP.Port() {
		return netip.AddrPort{}, fmt.Errorf("origdst: %v → %v: %w", c.RemoteAddr(), localAP, ErrNotRedirected)
	}
	return dst, nil
}

func original4(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: address family %d", sa.Family)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), nil
}

func original6(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: address family %d", sa.Family)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port)), nil
}

// getsockopt reads a socket option into a caller-owned struct; x/sys/unix
// has typed getters only for other structs.
func getsockopt(fd uintptr, level, opt int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// ntohs turns the port of a raw sockaddr (network byte order) into a
// number.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
