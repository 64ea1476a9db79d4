package detect

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// chunkConn is an in-memory net.Conn whose Read hands out data in chunks of
// the given sizes (cycled). A size of 0 produces one (0, nil) read; two
// empty reads are never produced in a row.
type chunkConn struct {
	mu        sync.Mutex
	data      []byte
	pos       int
	chunks    []int
	ci        int
	lastEmpty bool
	endErr    error // returned once data is exhausted; io.EOF if nil

	deadlineErr error // returned by SetReadDeadline if set
	deadlines   []time.Time
	written     []byte
}

func newChunkConn(data []byte, chunks ...int) *chunkConn {
	return &chunkConn{data: data, chunks: chunks}
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pos >= len(c.data) {
		if c.endErr != nil {
			return 0, c.endErr
		}
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	size := len(c.data)
	if len(c.chunks) > 0 {
		size = c.chunks[c.ci%len(c.chunks)]
		c.ci++
		if size == 0 {
			if !c.lastEmpty {
				c.lastEmpty = true
				return 0, nil
			}
			size = 1
		}
	}
	c.lastEmpty = false
	n := copy(p[:min(size, len(p))], c.data[c.pos:])
	c.pos += n
	return n, nil
}

func (c *chunkConn) consumed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos
}

func (c *chunkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written = append(c.written, p...)
	return len(p), nil
}

func (c *chunkConn) Close() error                     { return nil }
func (c *chunkConn) LocalAddr() net.Addr              { return fakeAddr{} }
func (c *chunkConn) RemoteAddr() net.Addr             { return fakeAddr{} }
func (c *chunkConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *chunkConn) SetWriteDeadline(time.Time) error { return nil }

func (c *chunkConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deadlineErr != nil {
		return c.deadlineErr
	}
	c.deadlines = append(c.deadlines, t)
	return nil
}

// reset rewinds the conn for reuse (benchmarks).
func (c *chunkConn) reset() {
	c.pos, c.ci, c.lastEmpty = 0, 0, false
	c.deadlines = c.deadlines[:0]
}

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fake" }
func (fakeAddr) String() string  { return "fake" }

var errReset = errors.New("connection reset by peer")
