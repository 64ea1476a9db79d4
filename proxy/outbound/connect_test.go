package outbound

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

func TestConnect(t *testing.T) {
	unreachable := fmt.Errorf("dial: %w", meshcode.ErrPeerUnavailable)
	badIdentity := discovery.Endpoint{Addr: "bad:1", Identity: "not a spiffe id"}
	tests := []struct {
		name        string
		eps         []discovery.Endpoint
		unavailable []string
		dialErr     []string
		attempts    int
		service     string
		expired     bool
		// want is the address connected to; else wantErr a substring of
		// the error and wantKind its kind.
		want     string
		wantErr  string
		wantKind bridge.ErrorKind
		// dials are the addresses Get was asked for, in order; failed the
		// endpoints the balancer heard failed.
		dials  []string
		failed []string
	}{
		{name: "first", eps: endpointsAt("a:1", "b:1"), want: "a:1", dials: []string{"a:1"}},
		{name: "skips back-off", eps: endpointsAt("a:1", "b:1"), unavailable: []string{"a:1"}, want: "b:1", dials: []string{"b:1"}},
		{name: "all in back-off: tried anyway", eps: endpointsAt("a:1", "b:1"), unavailable: []string{"a:1", "b:1"}, want: "a:1", dials: []string{"a:1"}},
		{name: "next after a failed dial", eps: endpointsAt("a:1", "b:1"), dialErr: []string{"a:1"}, want: "b:1", dials: []string{"a:1", "b:1"}, failed: []string{"a:1"}},
		{name: "invalid identity never dialed", eps: append([]discovery.Endpoint{badIdentity}, endpointsAt("b:1")...), want: "b:1", dials: []string{"b:1"}},
		{name: "only an invalid identity", eps: []discovery.Endpoint{badIdentity}, wantErr: "endpoint bad:1 has an invalid identity", wantKind: bridge.BadGateway, failed: []string{"bad:1"}},
		{name: "attempts bounded", eps: endpointsAt("a:1", "b:1", "c:1", "d:1"), dialErr: []string{"a:1", "b:1", "c:1", "d:1"}, attempts: 3,
			wantErr: ErrNoRoute.Error(), wantKind: bridge.BadGateway, dials: []string{"a:1", "b:1", "c:1"}, failed: []string{"a:1", "b:1", "c:1"}},
		{name: "unknown service", eps: endpointsAt("a:1"), service: "nope", wantErr: `no service "nope" in discovery`, wantKind: bridge.Unavailable},
		{name: "no endpoints", eps: nil, wantErr: discovery.ErrNoEndpoints.Error(), wantKind: bridge.Unavailable},
		{name: "out of time", eps: endpointsAt("a:1"), expired: true, wantErr: "deadline", wantKind: bridge.Timeout, dials: []string{"a:1"}, failed: []string{"a:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peers := &fakePeers{dialErr: map[string]error{}, unavailable: map[string]bool{}}
			for _, a := range tt.dialErr {
				peers.dialErr[a] = unreachable
			}
			for _, a := range tt.unavailable {
				peers.unavailable[a] = true
			}
			bal := &fakeBalancer{}
			attempts := cmp(tt.attempts, 3)
			c := newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": tt.eps}}, Peers: peers, Balancer: bal, Options: Options{MaxAttempts: attempts}})
			ctx := context.Background()
			if tt.expired {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, time.Now().Add(-time.Second))
				defer cancel()
			}
			pc, pk, err := c.connect(ctx, cmp(tt.service, "web"), nil)
			if tt.wantErr == "" {
				if err != nil || pc.Addr() != tt.want || pk == nil {
					t.Fatalf("connect = %v, %v; want %s", pc, err, tt.want)
				}
			} else {
				var ce *connectError
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) || ce.kind != tt.wantKind {
					t.Fatalf("connect error = %v; want one containing %q of kind %v", err, tt.wantErr, tt.wantKind)
				}
			}
			if want := min(len(tt.want), 1); bal.stillOutstanding() != want {
				t.Errorf("%d picks outstanding, want %d (the connected one's)", bal.stillOutstanding(), want)
			}
			if got := peers.dialed(); !slices.Equal(got, tt.dials) {
				t.Errorf("dialed %v, want %v", got, tt.dials)
			}
			var failed []string
			for _, r := range bal.got() {
				if !r.outcome.Failed || r.outcome.Latency < 0 {
					t.Errorf("report %+v during connect: only failures are reported there", r)
				}
				failed = append(failed, strings.Split(r.key, "|")[0])
			}
			if !slices.Equal(failed, tt.failed) {
				t.Errorf("balancer heard failures of %v, want %v", failed, tt.failed)
			}
		})
	}
}

func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func TestConnectErrorKind(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-expired.Done()
	tests := []struct {
		ctx  context.Context
		err  error
		want bridge.ErrorKind
	}{
		{context.Background(), fmt.Errorf("x: %w", discovery.ErrUnknownService), bridge.Unavailable},
		{context.Background(), fmt.Errorf("x: %w", discovery.ErrNoEndpoints), bridge.Unavailable},
		{expired, errors.New("dial: context deadline exceeded"), bridge.Timeout},
		{context.Background(), fmt.Errorf("%w: handshake timeout", ErrNoRoute), bridge.BadGateway},
	}
	for _, tt := range tests {
		if got := connectErrorKind(tt.ctx, tt.err); got != tt.want {
			t.Errorf("connectErrorKind(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// Identities are parsed when a new endpoint set arrives, not per pick: a
// set discovery hands out again is the parsed one.
func TestEndpointSetsParseOncePerUpdate(t *testing.T) {
	first := endpointsAt("a:1", "b:1")
	d := &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": first}}
	sets := newEndpointSets(d)
	ctx := context.Background()
	s1, err := sets.get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := sets.get(ctx, "web")
	if s1 != s2 {
		t.Fatal("the same discovery answer was parsed twice")
	}
	if s1.eps[1].addr != "b:1" || s1.eps[1].id.String() != first[1].Identity || s1.keys[1].Key != first[1].Key() {
		t.Fatalf("parsed %+v %+v from %+v", s1.eps[1], s1.keys[1], first[1])
	}
	// An update (a new slice, even with equal contents) is parsed afresh.
	d.sets["web"] = endpointsAt("a:1", "b:1")
	s3, _ := sets.get(ctx, "web")
	if s3 == s1 {
		t.Fatal("an update was not parsed")
	}
	// Failed lookups are not remembered: hosts on the HTTP proxy
	// listener cannot grow the memo.
	for i := range 100 {
		if _, err := sets.get(ctx, fmt.Sprintf("host%d", i)); !errors.Is(err, discovery.ErrUnknownService) {
			t.Fatalf("unknown service: %v", err)
		}
	}
	if len(sets.last) != 1 {
		t.Fatalf("memo holds %d services, want 1", len(sets.last))
	}
}

// restartingPeers fails the first Get of each address in failFirst with
// its error, then behaves as fakePeers.
type restartingPeers struct {
	*fakePeers
	failFirst map[string]error
}

func (p *restartingPeers) Get(ctx context.Context, addr string, want identity.ID) (PeerConn, error) {
	p.mu.Lock()
	err := p.failFirst[addr]
	delete(p.failFirst, addr)
	if err != nil {
		p.dials = append(p.dials, addr)
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()
	return p.fakePeers.Get(ctx, addr, want)
}

// A rolling restart as the connector sees it, every endpoint in back-off:
// a probe finds the restarted endpoint a still down (a failure marked
// meshcode.ErrPeerRestarting), then b, which began to drain meanwhile,
// refuses. a is tried once more, and is back. A failure without the mark
// (a dead peer) is not tried again, nor is a restarting one twice, nor
// one that no other endpoint was tried after.
func TestConnectRetriesRestartingEndpoint(t *testing.T) {
	restarting := meshcode.Mark(fmt.Errorf("dial: %w", meshcode.ErrPeerUnavailable), meshcode.ErrPeerRestarting)
	dead := fmt.Errorf("dial: %w", meshcode.ErrPeerUnavailable)
	refused := fmt.Errorf("dial: refused: %w", meshcode.ErrPeerUnavailable)
	for _, tt := range []struct {
		name      string
		eps       []discovery.Endpoint
		failFirst map[string]error
		dialErr   []string // always fail
		want      string   // "" for an error
		dials     []string
	}{
		{name: "restarting, then back", eps: endpointsAt("a:1", "b:1"), failFirst: map[string]error{"a:1": restarting}, dialErr: []string{"b:1"},
			want: "a:1", dials: []string{"a:1", "b:1", "a:1"}},
		{name: "dead: not tried again", eps: endpointsAt("a:1", "b:1"), failFirst: map[string]error{"a:1": dead}, dialErr: []string{"b:1"},
			dials: []string{"a:1", "b:1"}},
		{name: "only endpoint: not tried again at once", eps: endpointsAt("a:1"), failFirst: map[string]error{"a:1": restarting},
			dials: []string{"a:1"}},
		{name: "both restarting: each once more, within the attempts", eps: endpointsAt("a:1", "b:1"), failFirst: map[string]error{"a:1": restarting, "b:1": restarting},
			want: "a:1", dials: []string{"a:1", "b:1", "a:1"}},
		{name: "refused by the draining one first", eps: endpointsAt("a:1", "b:1"), failFirst: map[string]error{"a:1": refused, "b:1": restarting},
			dials: []string{"a:1", "b:1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			peers := &restartingPeers{fakePeers: &fakePeers{dialErr: map[string]error{}, unavailable: map[string]bool{}}, failFirst: tt.failFirst}
			for _, a := range tt.dialErr {
				peers.dialErr[a] = refused
			}
			c := newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": tt.eps}}, Peers: peers, Balancer: &fakeBalancer{}, Options: Options{MaxAttempts: 3}})
			pc, _, err := c.connect(context.Background(), "web", nil)
			switch {
			case tt.want != "" && (err != nil || pc.Addr() != tt.want):
				t.Fatalf("connect = %v, %v; want %s", pc, err, tt.want)
			case tt.want == "" && err == nil:
				t.Fatalf("connect = %v; want an error", pc.Addr())
			}
			if got := peers.dialed(); !slices.Equal(got, tt.dials) {
				t.Errorf("dialed %v, want %v", got, tt.dials)
			}
		})
	}
}
