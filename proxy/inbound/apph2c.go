package inbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Defaults for the HTTP/2 connections from the inbound sidecar to its app.
const (
	// DefaultAppStreamWindow is the HTTP/2 receive window, and so the
	// most response data buffered, per request to an h2c app: the
	// protocol's own default window. x/net's and net/http's client
	// default (4 MiB per stream, 1 GiB per connection) let one client
	// that never reads make us buffer gigabytes.
	DefaultAppStreamWindow = 64 << 10
	// DefaultAppStreamsPerConn is how many requests share one connection
	// to an h2c app before another connection is opened.
	DefaultAppStreamsPerConn = 100
)

var errAppPoolClosed = errors.New("inbound: app connection pool closed")

// h2cPool sends requests to h2c apps over connections it keeps itself,
// with at most maxStreams requests on each. Each connection's receive
// window is maxStreams × the stream window, so even when every one of its
// streams has stalled (a client that stopped reading), the streams hold
// only their own windows and never the connection's: a stalled stream
// stalls itself, not the requests that share its app connection.
// net/http's pool would put as many streams on a connection as the app
// allows (gRPC servers allow any number), so this pool uses
// http.ClientConn directly.
type h2cPool struct {
	tr         *http.Transport
	maxStreams int

	mu      sync.Mutex
	conns   map[string][]*http.ClientConn // by app address
	dialing map[string]chan struct{}      // closed when the dial in flight ends
	closed  bool
}

func newH2CPool(dial func(ctx context.Context, network, addr string) (net.Conn, error), streamWindow, maxStreams int) *h2cPool {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &h2cPool{
		tr: &http.Transport{
			Protocols:              &protos,
			DialContext:            dial,
			DisableCompression:     true,
			MaxResponseHeaderBytes: 64 << 10,
			IdleConnTimeout:        90 * time.Second,
			HTTP2: &http.HTTP2Config{
				MaxReceiveBufferPerStream:     streamWindow,
				MaxReceiveBufferPerConnection: streamWindow * maxStreams,
				SendPingTimeout:               30 * time.Second,
			},
		},
		maxStreams: maxStreams,
		conns:      make(map[string][]*http.ClientConn),
		dialing:    make(map[string]chan struct{}),
	}
}

// RoundTrip sends req on a connection to req.URL.Host with a free slot,
// dialing one when every connection is full.
func (p *h2cPool) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		// The caller is gone already: do not start work at the app.
		return nil, err
	}
	cc, err := p.reserve(ctx, req.URL.Host)
	if err != nil {
		return nil, err
	}
	return cc.RoundTrip(req)
}

// reserve returns a connection to addr with one request slot reserved
// for the caller.
func (p *h2cPool) reserve(ctx context.Context, addr string) (*http.ClientConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errAppPoolClosed
		}
		conns := p.conns[addr]
		live := conns[:0]
		var found *http.ClientConn
		for _, cc := range conns {
			if cc.Err() != nil {
				continue // closed by the app, by idleness or by an error
			}
			live = append(live, cc)
			// Slots are only taken under p.mu, so InFlight cannot grow
			// between the check and the reservation.
			if found == nil && cc.InFlight() < p.maxStreams && cc.Reserve() == nil {
				found = cc
			}
		}
		clear(conns[len(live):])
		p.conns[addr] = live
		if found != nil {
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
			// One dial per address at a time: a burst of requests
			// fills each new connection before the next is opened.
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		cc, err := p.tr.NewClientConn(ctx, "http", addr)
		p.mu.Lock()
		delete(p.dialing, addr)
		close(wait)
		if err == nil {
			if p.closed {
				cc.Close()
				err = errAppPoolClosed
			} else {
				p.conns[addr] = append(p.conns[addr], cc)
			}
		}
		p.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("inbound: connecting to h2c app %s: %w", addr, err)
		}
	}
}

// close closes every connection; requests in flight fail.
func (p *h2cPool) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, cs := range conns {
		for _, cc := range cs {
			cc.Close()
		}
	}
}
