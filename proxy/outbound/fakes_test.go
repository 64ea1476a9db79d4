package outbound

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/balance"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// Test doubles for the outbound's consumer-owned interfaces.

// fakeDiscovery answers from a fixed map, counting lookups.
type fakeDiscovery struct {
	sets  map[string][]discovery.Endpoint
	err   error
	calls atomic.Int64
}

func (d *fakeDiscovery) Endpoints(_ context.Context, service string) ([]discovery.Endpoint, error) {
	d.calls.Add(1)
	if d.err != nil {
		return nil, d.err
	}
	eps, ok := d.sets[service]
	if !ok {
		return nil, discovery.ErrUnknownService
	}
	return eps, nil
}

// fakePeers hands out a fakeConn per address; dialErr and unavailable
// make chosen addresses fail.
type fakePeers struct {
	mu          sync.Mutex
	conns       map[string]*fakeConn
	dialErr     map[string]error
	unavailable map[string]bool
	dials       []string
	newConn     func(addr string) *fakeConn
}

func (p *fakePeers) Get(ctx context.Context, addr string, want identity.ID) (PeerConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dials = append(p.dials, addr)
	if err := p.dialErr[addr]; err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := p.conns[addr]
	if c == nil || c.forgotten.Load() {
		c = &fakeConn{addr: addr, peer: want, alive: true}
		if p.newConn != nil {
			c = p.newConn(addr)
			c.addr, c.peer = addr, want
		}
		if p.conns == nil {
			p.conns = map[string]*fakeConn{}
		}
		p.conns[addr] = c
	}
	return c, nil
}

func (p *fakePeers) Unavailable(addr string, _ identity.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unavailable[addr]
}

func (p *fakePeers) dialed() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dials...)
}

// fakeConn answers round trips with roundTrip and tunnels with openErr
// or a fakeStream.
type fakeConn struct {
	addr      string
	peer      identity.ID
	alive     bool
	roundTrip func(*http.Request) (*http.Response, error)
	openErr   error
	// holdTunnels makes tunnel streams carry nothing until reset.
	holdTunnels bool
	forgotten   atomic.Bool
	begun       atomic.Int64
}

func (c *fakeConn) Addr() string      { return c.addr }
func (c *fakeConn) Peer() identity.ID { return c.peer }
func (c *fakeConn) Alive() bool       { return c.alive }
func (c *fakeConn) Forget()           { c.forgotten.Store(true) }
func (c *fakeConn) Begin() func() {
	c.begun.Add(1)
	return func() { c.begun.Add(-1) }
}

func (c *fakeConn) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.roundTrip == nil {
		return textResponse(r, 200, "ok"), nil
	}
	return c.roundTrip(r)
}

func (c *fakeConn) OpenTunnel(ctx context.Context, target string) (TunnelStream, error) {
	if c.openErr != nil {
		return nil, c.openErr
	}
	s := &fakeStream{target: target, resetCh: make(chan struct{})}
	if !c.holdTunnels {
		s.Reset(meshcode.Reset)
	}
	return s, nil
}

// fakeStream ends (EOF) once reset, or once we close our direction (the
// far side answers a FIN with its own).
type fakeStream struct {
	target  string
	once    sync.Once
	resetCh chan struct{}
}

func (s *fakeStream) Read(p []byte) (int, error) {
	<-s.resetCh
	return 0, io.EOF
}
func (s *fakeStream) Write(p []byte) (int, error) { return len(p), nil }
func (s *fakeStream) CloseWrite() error           { s.end(); return nil }
func (s *fakeStream) Reset(meshcode.Code)         { s.end() }
func (s *fakeStream) end()                        { s.once.Do(func() { close(s.resetCh) }) }

func textResponse(r *http.Request, status int, body string) *http.Response {
	return &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body)), Request: r, ProtoMajor: 3}
}

// fakeBalancer picks the first endpoint not skipped, and records what it
// observes and how much work is outstanding.
type fakeBalancer struct {
	mu          sync.Mutex
	reports     []report
	picks       int
	outstanding int
}

type report struct {
	key     string
	outcome balance.Outcome
}

func (b *fakeBalancer) Pick(eps []balance.Endpoint, skip func(int) bool) (int, bool) {
	for i := range eps {
		if skip == nil || !skip(i) {
			b.mu.Lock()
			b.picks++
			b.outstanding++
			b.mu.Unlock()
			return i, true
		}
	}
	return 0, false
}

func (b *fakeBalancer) Observe(ep balance.Endpoint, o balance.Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reports = append(b.reports, report{ep.Key, o})
}

func (b *fakeBalancer) Done(balance.Endpoint) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.outstanding--
}

func (b *fakeBalancer) stillOutstanding() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.outstanding
}

func (b *fakeBalancer) got() []report {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]report(nil), b.reports...)
}

func endpointsAt(addrs ...string) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = discovery.Endpoint{Addr: a, Identity: "spiffe://test/ns/x/sa/" + strings.ReplaceAll(a, ":", "-")}
	}
	return out
}
