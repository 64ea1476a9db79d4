package transport

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

// spliceBufSize trades syscalls against memory: two buffers per tunnel
// are held while it is blocked, so 32 KiB keeps 1,000 idle tunnels near
// 64 MiB worst case while still moving ~2 Gbit/s per stream.
const spliceBufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}

// SpliceResult reports what a splice moved and how it ended.
type SpliceResult struct {
	// Sent is TCP→stream, Received is stream→TCP.
	Sent, Received int64
	// Err is the first error that aborted a direction; nil when both
	// directions ended with a clean FIN.
	Err error
}

type closeWriter interface{ CloseWrite() error }

// Stream is the mesh side of a splice: a *quic.Stream, or a wrapper whose
// reads must go through bytes already buffered in front of the stream (an
// HTTP server's reader after a protocol switch).
type Stream interface {
	io.Reader
	io.Writer
	// Close ends the send direction (FIN).
	Close() error
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
}

var _ Stream = (*quic.Stream)(nil)

type lingerer interface{ SetLinger(sec int) error }

// Splice copies bytes both ways between an app's TCP connection and a
// tunnel stream until both directions are finished, then closes conn.
//
// Half-close is carried independently per direction: EOF from the app
// becomes a FIN on the stream, and a FIN from the stream becomes
// CloseWrite on the socket. An abort on either side aborts the other: a
// TCP reset or error cancels the stream with CodeReset, and a stream
// reset makes conn close with RST (SO_LINGER 0).
func Splice(conn net.Conn, str Stream) SpliceResult {
	var res SpliceResult
	var once sync.Once
	abort := func(err error, resetTCP bool) {
		once.Do(func() {
			res.Err = err
			str.CancelWrite(CodeReset)
			str.CancelRead(CodeReset)
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
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := conn.Read(buf)
		if n > 0 {
			if _, werr := str.Write(buf[:n]); werr != nil {
				// The peer stopped reading (STOP_SENDING) or the
				// connection died: the app must not think its bytes
				// were delivered.
				abort(werr, true)
				return total
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			if err := str.Close(); err != nil {
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
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := str.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				abort(werr, false)
				return total
			}
			total += int64(n)
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

// IsReset reports whether err is a stream or connection abort rather than
// a local failure; used to classify tunnel endings.
func IsReset(err error) bool {
	var se *quic.StreamError
	var ae *quic.ApplicationError
	return errors.As(err, &se) || errors.As(err, &ae)
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
// clean close.
func ErrClass(err error) string {
	if err == nil {
		return ""
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		switch se.ErrorCode {
		case CodeReset:
			return "peer_reset"
		case CodeUnknownTarget:
			return "unknown_target"
		case CodeConnectFailed:
			return "connect_failed"
		case CodeShuttingDown:
			return "shutting_down"
		}
		return "stream_reset"
	}
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	switch {
	case errors.As(err, &ae):
		return "connection_closed"
	case errors.As(err, &ie):
		return "idle_timeout"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	return "io_error"
}

// h3RequestRejected is HTTP/3's H3_REQUEST_REJECTED: the server did not
// process the request.
const h3RequestRejected = 0x10b

// Refused reports whether err says the peer did not process a request at
// all, so that sending it again (on a fresh connection, or elsewhere) is
// safe: it was closing, it rejected the stream, the stream could not even
// be opened (ErrStreamNotOpened), or the connection turned out dead: a
// stateless reset means the peer has no state for it, typically because
// it restarted. (A request already in flight when a peer crashed may have
// been processed before the crash; callers retry only body-less requests,
// once.)
func Refused(err error) bool {
	if ConnectionDead(err) {
		return true
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && !ae.Remote {
		return false
	}
	if errors.As(err, &ae) && (ae.ErrorCode == ConnCodeShutdown || ae.ErrorCode == 0x100 /* H3_NO_ERROR */) {
		return true
	}
	var se *quic.StreamError
	return errors.As(err, &se) && (se.ErrorCode == h3RequestRejected || se.ErrorCode == CodeShuttingDown)
}

// ConnectionDead reports whether err shows that the connection it came
// from is gone for good (a stateless reset, or a stream that could not be
// opened because the connection had closed), even if the connection's
// context has not ended yet: the HTTP/3 layer can report a stateless reset
// a moment before the QUIC connection is torn down. Such a connection must
// not be handed out again.
func ConnectionDead(err error) bool {
	var sr *quic.StatelessResetError
	return errors.As(err, &sr) || errors.Is(err, ErrStreamNotOpened)
}
