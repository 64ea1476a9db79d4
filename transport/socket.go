package transport

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
	"golang.org/x/sys/unix"
)

// WantBufferBytes is the UDP socket buffer size quic-go asks for (it raises
// the buffers itself, with SO_*BUFFORCE when running as root); below it,
// bursts at high throughput are dropped by the kernel before QUIC sees
// them.
const WantBufferBytes = 7 << 20

// SocketInfo reports what the kernel granted the mesh UDP socket.
type SocketInfo struct {
	RecvBuffer, SendBuffer int  // bytes, as reported by getsockopt
	GSO                    bool // UDP generic segmentation offload available
}

// SocketInfo reads the socket's effective settings. quic-go applies its
// buffer sizes when the endpoint first listens or dials, so call it after
// that.
func (e *Endpoint) SocketInfo() (SocketInfo, error) {
	var info SocketInfo
	rc, err := e.udp.SyscallConn()
	if err != nil {
		return info, err
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		if info.RecvBuffer, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); serr != nil {
			return
		}
		if info.SendBuffer, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF); serr != nil {
			return
		}
		_, gerr := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		info.GSO = gerr == nil && os.Getenv("QUIC_GO_DISABLE_GSO") == ""
	})
	if cerr != nil {
		return info, cerr
	}
	// Linux reports twice the requested size (it counts bookkeeping).
	info.RecvBuffer /= 2
	info.SendBuffer /= 2
	return info, serr
}

// qlogTracer writes one qlog file per connection into dir, for debugging
// a QUIC connection with qvis or similar tools. It is opt-in: traces are
// large and cost CPU.
func qlogTracer(dir string, logf func(msg string, args ...any)) func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
	return func(_ context.Context, isClient bool, id quic.ConnectionID) qlogwriter.Trace {
		role := "server"
		if isClient {
			role = "client"
		}
		path := filepath.Join(dir, fmt.Sprintf("%s_%s.sqlog", id, role))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			logf("cannot create qlog file", "path", path, "error", err)
			return nil
		}
		seq := qlogwriter.NewConnectionFileSeq(&bufferedFile{Writer: bufio.NewWriterSize(f, 64<<10), f: f}, isClient, id)
		go seq.Run()
		return seq
	}
}

type bufferedFile struct {
	*bufio.Writer
	f io.Closer
}

func (b *bufferedFile) Close() error {
	if err := b.Flush(); err != nil {
		b.f.Close()
		return err
	}
	return b.f.Close()
}

// raiseBuffers asks for WantBufferBytes of usable socket buffer in each
// direction, forcing past net.core.[rw]mem_max when the process may
// (CAP_NET_ADMIN). Failure is reported by SocketInfo, not here.
func raiseBuffers(c *net.UDPConn) {
	c.SetReadBuffer(WantBufferBytes)
	c.SetWriteBuffer(WantBufferBytes)
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && v/2 < WantBufferBytes {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, WantBufferBytes)
		}
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && v/2 < WantBufferBytes {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, WantBufferBytes)
		}
	})
}
