package h2client

import (
	"context"
	"fmt"
	"sync"
)

// PoolConn is a connection a Pool keeps.
type PoolConn interface {
	// TryReserve takes a request slot if take and one is free. dead
	// reports a connection that takes no more requests, ever.
	TryReserve(take bool) (ok, dead bool)
	// Err is why the connection takes no more requests, or nil.
	Err() error
	// Close closes the connection; requests on it fail.
	Close() error
}

// Pool keeps multiplexed connections by address and hands out request
// slots on them: the picker of Client and of the inbound side's
// fallback pool (proxy/inbound, apph2c.go).
type Pool[C PoolConn] struct {
	dial func(ctx context.Context, addr string) (C, error)

	mu      sync.Mutex
	conns   map[string][]C           // by address
	dialing map[string]chan struct{} // closed when the dial in flight ends
	closed  bool
}

// NewPool returns a pool that opens connections with dial.
func NewPool[C PoolConn](dial func(ctx context.Context, addr string) (C, error)) *Pool[C] {
	return &Pool[C]{dial: dial, conns: make(map[string][]C), dialing: make(map[string]chan struct{})}
}

// Reserve returns a connection to addr with one request slot reserved,
// dialing one when every connection is full, and drops the connections
// that take no more requests.
func (p *Pool[C]) Reserve(ctx context.Context, addr string) (C, error) {
	var none C
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return none, ErrClosed
		}
		conns := p.conns[addr]
		live := conns[:0]
		var found C
		ok := false
		for _, cc := range conns {
			// Slots are only taken under p.mu: none is taken between
			// a connection's check and its reservation.
			took, dead := cc.TryReserve(!ok)
			if dead {
				continue // closed by the app, by idleness or by an error
			}
			live = append(live, cc)
			if took {
				found, ok = cc, true
			}
		}
		clear(conns[len(live):])
		p.conns[addr] = live
		if ok {
			p.mu.Unlock()
			return found, nil
		}
		wait, dialing := p.dialing[addr]
		if !dialing {
			wait = make(chan struct{})
			p.dialing[addr] = wait
		}
		p.mu.Unlock()

		if dialing {
			// One dial per address at a time: a burst of requests fills
			// each new connection before the next is opened.
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return none, ctx.Err()
			}
		}
		cc, err := p.dial(ctx, addr)
		p.mu.Lock()
		delete(p.dialing, addr)
		close(wait)
		if err == nil {
			if p.closed {
				cc.Close()
				err = ErrClosed
			} else {
				p.conns[addr] = append(p.conns[addr], cc)
			}
		}
		p.mu.Unlock()
		if err != nil {
			return none, fmt.Errorf("h2client: connecting to %s: %w", addr, err)
		}
		// The dialer takes the first slot of its connection: a
		// connection that cannot take even one request fails the
		// request rather than make it dial forever.
		if ok, _ := cc.TryReserve(true); ok {
			return cc, nil
		}
		if err := cc.Err(); err != nil {
			return none, err
		}
		return none, fmt.Errorf("h2client: the app at %s takes no requests on a new connection (SETTINGS_MAX_CONCURRENT_STREAMS 0 or GOAWAY)", addr)
	}
}

// Close closes every connection; requests in flight fail, and Reserve
// returns ErrClosed from now on.
func (p *Pool[C]) Close() {
	p.mu.Lock()
	p.closed = true
	all := p.allLocked()
	p.conns = nil
	p.mu.Unlock()
	for _, cc := range all {
		cc.Close()
	}
}

// all returns the connections the pool keeps (tests).
func (p *Pool[C]) all() []C {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.allLocked()
}

func (p *Pool[C]) allLocked() []C {
	var all []C
	for _, cs := range p.conns {
		all = append(all, cs...)
	}
	return all
}
