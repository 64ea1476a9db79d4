package httpx

import (
	"net"
	"sync"
)

// ConnListener is a net.Listener fed with connections that were accepted
// (and classified) elsewhere, so that one http.Server serves them all with
// its timeouts, limits and graceful shutdown.
type ConnListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// NewConnListener returns an open ConnListener.
func NewConnListener() *ConnListener {
	return &ConnListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

// Push hands c to the server's next Accept. Once the listener is closed, c
// is closed instead and Push returns false.
func (q *ConnListener) Push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.closed:
		c.Close()
		return false
	}
}

// Accept implements net.Listener.
func (q *ConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener; it is idempotent.
func (q *ConnListener) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

// Addr implements net.Listener.
func (q *ConnListener) Addr() net.Addr { return pushedAddr{} }

type pushedAddr struct{}

func (pushedAddr) Network() string { return "pushed" }
func (pushedAddr) String() string  { return "pushed" }
