// Package splice joins an app's TCP connection and a mesh tunnel stream,
// carrying half-close and resets across, and names how a tunnel ended
// for metrics.
package splice

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Copy buffers. A tunnel's two copy loops each hold one buffer while
// blocked in Read, so an idle tunnel must hold a small one: 32 KiB keeps
// 1,000 idle tunnels near 64 MiB worst case. A bulk transfer wants a large
// one: every Write to a QUIC stream is a hand-off to the connection's
// send loop (and every Write to TCP a syscall): between two sidecar
// processes this scheme cut the sidecars' CPU per byte by 5 % one-way and
// 10 % in both directions at once (medians of interleaved A/B runs,
// docs/benchmarks.md, "One TCP tunnel between processes"); a buffer of
// 256 KiB throughout did better still (23 % both ways) but would hold
// 512 KiB per idle tunnel. A loop switches to the large buffer
// when a read fills the small one (more was waiting) and back when a read
// would have fitted the small one (the burst is over), so only tunnels
// that are moving bulk data hold large buffers.
const (
	smallBufSize = 32 << 10
	bulkBufSize  = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	bulkPool  = sync.Pool{New: func() any { b := make([]byte, bulkBufSize); return &b }}
)

// copyBuf is one copy loop's buffer, sized by what its reads return.
type copyBuf struct {
	p    *[]byte
	bulk bool
}

func newCopyBuf() copyBuf { return copyBuf{p: smallPool.Get().(*[]byte)} }

func (c *copyBuf) bytes() []byte { return *c.p }

// adapt picks the buffer for the next read after a read of n bytes; call
// it only once the n bytes have been written on.
func (c *copyBuf) adapt(n int) {
	switch {
	case !c.bulk && n == smallBufSize:
		smallPool.Put(c.p)
		c.p, c.bulk = bulkPool.Get().(*[]byte), true
	case c.bulk && n < smallBufSize:
		bulkPool.Put(c.p)
		c.p, c.bulk = smallPool.Get().(*[]byte), false
	}
}

func (c *copyBuf) release() {
	if c.bulk {
		bulkPool.Put(c.p)
	} else {
		smallPool.Put(c.p)
	}
	c.p = nil
}

// Result reports what a splice moved and how it ended.
type Result struct {
	// Sent is TCP→stream, Received is stream→TCP.
	Sent, Received int64
	// Err is the first error that aborted a direction; nil when both
	// directions ended with a clean FIN.
	Err error
}

type closeWriter interface{ CloseWrite() error }

// Stream is the mesh side of a splice: a transport's tunnel stream, or a
// wrapper whose reads must go through bytes already buffered in front of
// the stream (an HTTP server's reader after a protocol switch).
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends the send direction (FIN).
	CloseWrite() error
	// Reset aborts both directions with code.
	Reset(code meshcode.Code)
}

type lingerer interface{ SetLinger(sec int) error }

// Run copies bytes both ways between an app's TCP connection and a
// tunnel stream until both directions are finished, then closes conn.
//
// Half-close is carried independently per direction: EOF from the app
// becomes a FIN on the stream, and a FIN from the stream becomes
// CloseWrite on the socket. An abort on either side aborts the other: a
// TCP reset or error resets the stream with meshcode.Reset, and a stream
// reset makes conn close with RST (SO_LINGER 0).
func Run(conn net.Conn, str Stream) Result {
	var res Result
	var once sync.Once
	abort := func(err error, resetTCP bool) {
		once.Do(func() {
			res.Err = err
			str.Reset(meshcode.Reset)
			if resetTCP {
				Reset(conn)
			} else {
				conn.Close()
			}
		})
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		res.Sent = copyTCPToStream(conn, str, abort)
	}()
	res.Received = copyStreamToTCP(str, conn, abort)
	<-done
	conn.Close()
	return res
}

func copyTCPToStream(conn net.Conn, str Stream, abort func(error, bool)) int64 {
	buf := newCopyBuf()
	defer buf.release()
	var total int64
	for {
		n, rerr := conn.Read(buf.bytes())
		if n > 0 {
			if _, werr := str.Write(buf.bytes()[:n]); werr != nil {
				// The peer stopped reading (STOP_SENDING) or the
				// connection died: the app must not think its bytes
				// were delivered.
				abort(werr, true)
				return total
			}
			total += int64(n)
			buf.adapt(n)
		}
		if rerr == io.EOF {
			if err := str.CloseWrite(); err != nil {
				abort(err, true)
			}
			return total
		}
		if rerr != nil {
			abort(rerr, false)
			return total
		}
	}
}

func copyStreamToTCP(str Stream, conn net.Conn, abort func(error, bool)) int64 {
	buf := newCopyBuf()
	defer buf.release()
	var total int64
	for {
		n, rerr := str.Read(buf.bytes())
		if n > 0 {
			if _, werr := conn.Write(buf.bytes()[:n]); werr != nil {
				abort(werr, false)
				return total
			}
			total += int64(n)
			buf.adapt(n)
		}
		if rerr == io.EOF {
			if cw, ok := conn.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
					abort(err, false)
				}
			}
			return total
		}
		if rerr != nil {
			abort(rerr, true)
			return total
		}
	}
}

// Reset closes conn with a TCP RST (SO_LINGER 0) so the app sees an abort,
// not a clean end of stream. Wrappers are looked through via NetConn().
func Reset(conn net.Conn) {
	c := conn
	for {
		if l, ok := c.(lingerer); ok {
			l.SetLinger(0)
			break
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	conn.Close()
}

// ErrClass names how a tunnel ended, as a bounded metrics label: "" for a
// clean close. The labels are documented in docs/operations.md.
func ErrClass(err error) string {
	if err == nil {
		return ""
	}
	if se, ok := errors.AsType[*meshcode.StreamError](err); ok {
		switch se.Code {
		case meshcode.Reset:
			return "peer_reset"
		case meshcode.UnknownTarget:
			return "unknown_target"
		case meshcode.ConnectFailed:
			return "connect_failed"
		case meshcode.ShuttingDown:
			return "shutting_down"
		case meshcode.Forbidden:
			return "forbidden"
		}
		return "stream_reset"
	}
	switch {
	case errors.Is(err, meshcode.ErrConnClosed):
		return "connection_closed"
	case errors.Is(err, meshcode.ErrIdleTimeout):
		return "idle_timeout"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	return "io_error"
}
