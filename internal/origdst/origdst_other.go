//go:build !linux

package origdst

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
)

// Destination needs Linux netfilter; elsewhere it always fails.
func Destination(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("origdst: original destinations need Linux netfilter; this is " + runtime.GOOS)
}
