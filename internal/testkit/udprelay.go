package testkit

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// UDPRelay forwards UDP datagrams between its clients and one target on
// loopback, each client through its own socket (the target sees one
// address per client, as through a NAT). Blackhole drops every datagram
// both ways: a frozen peer or a partition, without network namespaces.
type UDPRelay struct {
	front  *net.UDPConn
	target *net.UDPAddr
	drop   atomic.Bool

	mu     sync.Mutex
	back   map[string]*net.UDPConn // by client address
	closed bool
	wg     sync.WaitGroup
}

// NewUDPRelay relays to target ("host:port") until the test ends.
func NewUDPRelay(t testing.TB, target string) *UDPRelay {
	t.Helper()
	taddr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &UDPRelay{front: front, target: taddr, back: make(map[string]*net.UDPConn)}
	r.wg.Go(r.forward)
	t.Cleanup(r.close)
	return r
}

// Addr is where clients send to reach the target.
func (r *UDPRelay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops (true) or forwards again (false) every datagram.
func (r *UDPRelay) Blackhole(on bool) { r.drop.Store(on) }

func (r *UDPRelay) forward() {
	buf := make([]byte, 64<<10)
	for {
		n, client, err := r.front.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if r.drop.Load() {
			continue
		}
		back, err := r.backFor(client)
		if err != nil {
			return
		}
		back.WriteToUDP(buf[:n], r.target)
	}
}

// backFor returns the socket that carries client's datagrams, starting
// the goroutine that relays the target's answers back.
func (r *UDPRelay) backFor(client *net.UDPAddr) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, net.ErrClosed
	}
	if c, ok := r.back[client.String()]; ok {
		return c, nil
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	r.back[client.String()] = c
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil || r.drop.Load() {
				continue
			}
			r.front.WriteToUDP(buf[:n], client)
		}
	})
	return c, nil
}

func (r *UDPRelay) close() {
	r.mu.Lock()
	r.closed = true
	r.front.Close()
	for _, c := range r.back {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
