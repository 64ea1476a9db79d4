package echo

import (
	"io"
	"net"
	"sync"
)

// StartTCP serves a raw TCP echo on ln: every byte read is written back.
// When the client half-closes (shuts down its write side) the server writes
// back everything it has read, then half-closes its own write side
// (CloseWrite), then closes the connection.
func StartTCP(ln net.Listener) *Server {
	tr := newTracker()
	var mu sync.Mutex
	conns := make(map[net.Conn]struct{})
	closing := false

	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return
			}
			mu.Lock()
			if closing || !tr.enter() {
				mu.Unlock()
				c.Close()
				continue
			}
			conns[c] = struct{}{}
			mu.Unlock()
			go func() {
				defer tr.exit()
				serveTCPEcho(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	stop := func() {
		mu.Lock()
		closing = true
		ln.Close()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	return newServer("tcp", ln, stop, func() {
		<-accepted
		tr.closeAndWait()
	})
}

// ListenTCP listens on addr and calls [StartTCP].
func ListenTCP(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return StartTCP(ln), nil
}

type closeWriter interface{ CloseWrite() error }

func serveTCPEcho(c net.Conn) {
	defer c.Close()
	// On Linux io.Copy between two *net.TCPConn uses splice(2).
	if _, err := io.Copy(c, c); err != nil {
		return
	}
	// Read side saw EOF: everything read has been written back.
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
}
