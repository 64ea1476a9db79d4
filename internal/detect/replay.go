package detect

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and *tls.Conn.
type closeWriter interface {
	CloseWrite() error
}

// replayConn yields the bytes consumed during detection, then reads from the
// underlying connection. Every other net.Conn method is the embedded one.
type replayConn struct {
	net.Conn

	drained atomic.Bool // fast path once buf and eof have been delivered
	mu      sync.Mutex  // guards buf and eof
	buf     []byte
	eof     bool // the underlying conn reported EOF during detection
}

// replayConnCW is a replayConn over a connection that supports half-close.
type replayConnCW struct {
	replayConn
	cw closeWriter
}

// CloseWrite shuts down the writing side of the underlying connection.
func (c *replayConnCW) CloseWrite() error { return c.cw.CloseWrite() }

// newReplayConn copies buf, so the caller may reuse it.
func newReplayConn(conn net.Conn, buf []byte, eof bool) net.Conn {
	b := make([]byte, len(buf))
	copy(b, buf)
	if cw, ok := conn.(closeWriter); ok {
		c := &replayConnCW{cw: cw}
		c.init(conn, b, eof)
		return c
	}
	c := &replayConn{}
	c.init(conn, b, eof)
	return c
}

func (c *replayConn) init(conn net.Conn, buf []byte, eof bool) {
	c.Conn, c.buf, c.eof = conn, buf, eof
}

// Read returns buffered bytes first. If the client had already closed its
// side during detection, the EOF is reported once the buffer is empty;
// later calls go to the underlying connection.
func (c *replayConn) Read(p []byte) (int, error) {
	if !c.drained.Load() {
		if n, ok, err := c.readBuffered(p); ok {
			return n, err
		}
	}
	return c.Conn.Read(p)
}

func (c *replayConn) readBuffered(p []byte) (n int, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case len(c.buf) > 0:
		if len(p) == 0 {
			return 0, true, nil
		}
		n = copy(p, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
			if !c.eof {
				c.drained.Store(true)
			}
		}
		return n, true, nil
	case c.eof:
		c.eof = false
		c.drained.Store(true)
		return 0, true, io.EOF
	}
	c.drained.Store(true)
	return 0, false, nil
}

// takeBuffered removes and returns the whole replay buffer.
func (c *replayConn) takeBuffered() (buf []byte, eof bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf, eof = c.buf, c.eof
	c.buf, c.eof = nil, false
	c.drained.Store(true)
	return buf, eof
}

// WriteTo implements io.WriterTo so that io.Copy(dst, c) writes the replay
// buffer and then lets dst / the underlying connection pick their fastest
// path (e.g. splice between two TCP sockets).
func (c *replayConn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if !c.drained.Load() {
		buf, eof := c.takeBuffered()
		if len(buf) > 0 {
			n, err := w.Write(buf)
			total += int64(n)
			if err != nil {
				return total, err
			}
			if n < len(buf) {
				return total, io.ErrShortWrite
			}
		}
		if eof {
			return total, nil
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// ReadFrom implements io.ReaderFrom by delegating to the underlying
// connection, preserving its zero-copy path when it has one.
func (c *replayConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

// NetConn returns the underlying connection, so callers can reach socket
// options such as SO_LINGER (to reset rather than close).
func (c *replayConn) NetConn() net.Conn { return c.Conn }
