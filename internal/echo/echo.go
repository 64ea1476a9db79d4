// Package echo provides small echo servers used as targets by the quicmesh
// load generator (package bench), the demo, "quicmesh-dev echo" and the
// end-to-end tests. Nothing here runs in the sidecar binary.
//
// Four servers are provided, all with the same handle type:
//
//   - HTTP/1.1 ([StartHTTP1], [ListenHTTP1]) and h2c with prior knowledge
//     ([StartH2C], [ListenH2C]) serving [Handler];
//   - a gRPC echo service registered from a hand-written [grpc.ServiceDesc]
//     with a raw-bytes codec ([StartGRPC], [ListenGRPC], [Codec]);
//   - a raw TCP echo ([StartTCP], [ListenTCP]) honouring half-close.
//
// Every Start function takes ownership of the listener; [Server.Close] closes
// it, closes every open connection and waits for every goroutine the server
// started to return.
package echo

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Server is a running echo server.
type Server struct {
	kind  string
	ln    net.Listener
	stop  func() // closes the listener and all connections
	wait  func() // waits for every goroutine to return
	once  sync.Once
	doneC chan struct{}
}

func newServer(kind string, ln net.Listener, stop, wait func()) *Server {
	return &Server{kind: kind, ln: ln, stop: stop, wait: wait, doneC: make(chan struct{})}
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL returns "http://ADDR/" for the HTTP/1.1 and h2c servers and the bare
// "host:port" for the gRPC and TCP servers, i.e. the form the load generator
// expects as its --target.
func (s *Server) URL() string {
	switch s.kind {
	case "http1", "h2c":
		return "http://" + s.ln.Addr().String() + "/"
	}
	return s.ln.Addr().String()
}

// Close stops the server: it closes the listener and every connection and
// returns once all goroutines started by the server have exited. It is safe
// to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.stop()
		s.wait()
		close(s.doneC)
	})
	<-s.doneC
	return nil
}

// tracker counts running goroutines (handlers, connection loops) so Close can
// wait for them without the WaitGroup reuse hazards of Add racing Wait.
type tracker struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{}
}

func newTracker() *tracker { return &tracker{idle: make(chan struct{})} }

// enter registers a goroutine; it reports false once the tracker is closed.
func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.n++
	return true
}

func (t *tracker) exit() {
	t.mu.Lock()
	t.n--
	if t.closed && t.n == 0 {
		close(t.idle)
	}
	t.mu.Unlock()
}

// closeAndWait refuses further enters and waits for the running ones.
func (t *tracker) closeAndWait() {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		if t.n == 0 {
			close(t.idle)
		}
	}
	t.mu.Unlock()
	<-t.idle
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
