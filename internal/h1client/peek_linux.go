package h1client

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peeker looks at an idle connection's socket without reading from it.
// Its parts are made once per connection: a look costs no allocation.
type peeker struct {
	rc    syscall.RawConn // nil: the connection is no socket
	look  func(fd uintptr) bool
	alive bool
}

func newPeeker(nc net.Conn) *peeker {
	p := &peeker{}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			p.rc = rc
		}
	}
	p.look = p.peek
	return p
}

func (p *peeker) peek(fd uintptr) bool {
	var b [1]byte
	n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		p.alive = true
	case err != nil || n >= 0:
		p.alive = false // closed (0 bytes), reset, or bytes nobody asked for
	}
	return true // never wait for readiness
}

// peekAlive reports whether an idle connection is still open and quiet:
// a non-blocking MSG_PEEK sees the app's FIN (0 bytes) or bytes it sent
// unasked, either of which makes the connection unusable. One system
// call per reuse.
func (p *peeker) peekAlive() bool {
	if p.rc == nil {
		return true
	}
	p.alive = false
	if err := p.rc.Read(p.look); err != nil {
		return false
	}
	return p.alive
}
