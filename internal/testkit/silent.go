package testkit

import (
	"net"
	"sync"
	"testing"
)

// SilentTCP accepts every connection on ln and never sends a byte: what
// a peer whose process is frozen (SIGSTOP) looks like to a dialler once
// the kernel has completed the connect. The listener and the accepted
// connections are closed at the end of the test.
func SilentTCP(t testing.TB, ln net.Listener) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range accepted {
			c.Close()
		}
	})
}
