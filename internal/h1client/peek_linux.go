package h1client

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peekAlive reports whether an idle connection is still open and quiet:
// a non-blocking MSG_PEEK sees the app's FIN (0 bytes) or bytes it sent
// unasked, either of which makes the connection unusable. One system
// call, paid only by requests that cannot be retried on a fresh
// connection (those with a body, or not idempotent): net/http learns the
// same from the read loop it keeps blocked on every idle connection.
func peekAlive(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
		case err != nil || n >= 0:
			alive = false // closed, reset, or unsolicited bytes
		}
		return true // never wait for readiness
	})
	return alive && err == nil
}
