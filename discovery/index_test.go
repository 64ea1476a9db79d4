package discovery

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

const (
	ordersID = "spiffe://cluster.local/ns/shop/sa/orders"
	cartID   = "spiffe://cluster.local/ns/shop/sa/cart"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func ip(s string) netip.Addr     { return netip.MustParseAddr(s) }

// clusterServices is two services sharing a pod, one pod without ports,
// one not ready, and a dual-stack virtual IP.
func clusterServices() []Service {
	orders1 := Endpoint{Addr: "10.1.0.5:4143", Identity: ordersID, PodIP: ip("10.1.0.5"), Ports: []uint16{8080, 9090}}
	orders2 := Endpoint{Addr: "10.1.0.6:4143", Identity: ordersID, PodIP: ip("10.1.0.6"), Ports: []uint16{8080}, NotReady: true}
	cart := Endpoint{Addr: "[fd00::7]:4143", Identity: cartID, PodIP: ip("fd00::7")} // every port
	return []Service{
		{
			Name:       "orders.shop",
			VirtualIPs: []netip.Addr{ip("10.96.0.10"), ip("fd00:96::10")},
			Ports:      []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "grpc", Port: 9090}},
			Endpoints:  []Endpoint{orders1, orders2},
		},
		{
			// Listed after orders.shop but sorts first: endpoint lookups
			// name it for the shared pod.
			Name:       "admin.shop",
			VirtualIPs: []netip.Addr{ip("10.96.0.11")},
			Ports:      []ServicePort{{Port: 7000, TargetPort: 7000}},
			Endpoints:  []Endpoint{{Addr: "10.1.0.5:4143", Identity: ordersID, PodIP: ip("10.1.0.5"), Ports: []uint16{7000}}},
		},
		{Name: "cart.shop", Endpoints: []Endpoint{cart}},
		{Name: "dns-only", Endpoints: []Endpoint{{Addr: "10.1.0.9:4143", Identity: cartID}}}, // no pod IP
	}
}

func TestIndexLookup(t *testing.T) {
	svcs := clusterServices()
	ix := NewIndex()
	if err := ix.Set(svcs); err != nil {
		t.Fatalf("Set: %v", err)
	}
	orders2, cart := svcs[0].Endpoints[1], svcs[2].Endpoints[0]
	admin := svcs[1].Endpoints[0]
	tests := []struct {
		name string
		dst  string
		want Target
	}{
		{"virtual IP, mapped port", "10.96.0.10:80", Target{Kind: ServiceTarget, Service: "orders.shop", Port: ServicePort{Name: "http", Port: 80, TargetPort: 8080}}},
		{"virtual IP, same port", "10.96.0.10:9090", Target{Kind: ServiceTarget, Service: "orders.shop", Port: ServicePort{Name: "grpc", Port: 9090}}},
		{"IPv6 virtual IP", "[fd00:96::10]:80", Target{Kind: ServiceTarget, Service: "orders.shop", Port: ServicePort{Name: "http", Port: 80, TargetPort: 8080}}},
		{"IPv4-mapped virtual IP", "[::ffff:10.96.0.10]:80", Target{Kind: ServiceTarget, Service: "orders.shop", Port: ServicePort{Name: "http", Port: 80, TargetPort: 8080}}},
		{"second service", "10.96.0.11:7000", Target{Kind: ServiceTarget, Service: "admin.shop", Port: ServicePort{Port: 7000, TargetPort: 7000}}},
		{"virtual IP, port not served", "10.96.0.10:8080", Target{}},
		{"pod IP at a listed port; first service by name", "10.1.0.5:8080", Target{Kind: EndpointTarget, Service: "admin.shop", Endpoint: admin}},
		{"pod IP at a port of another service", "10.1.0.5:9090", Target{Kind: EndpointTarget, Service: "admin.shop", Endpoint: admin}},
		{"pod IP at a port of the first service", "10.1.0.5:7000", Target{Kind: EndpointTarget, Service: "admin.shop", Endpoint: admin}},
		{"pod IP at an unlisted port", "10.1.0.5:22", Target{}},
		{"not-ready pod is still found", "10.1.0.6:8080", Target{Kind: EndpointTarget, Service: "orders.shop", Endpoint: orders2}},
		{"pod without ports: any port", "[fd00::7]:1", Target{Kind: EndpointTarget, Service: "cart.shop", Endpoint: cart}},
		{"pod without ports: another port", "[fd00::7]:65535", Target{Kind: EndpointTarget, Service: "cart.shop", Endpoint: cart}},
		{"mesh address is not a pod address", "10.1.0.9:4143", Target{}},
		{"unknown IP", "192.0.2.1:80", Target{}},
		{"zero", "0.0.0.0:0", Target{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ix.Lookup(ap(tt.dst))
			if got.Kind != tt.want.Kind || got.Service != tt.want.Service || got.Port != tt.want.Port || !got.Endpoint.Equal(tt.want.Endpoint) {
				t.Errorf("Lookup(%s) = %+v, want %+v", tt.dst, got, tt.want)
			}
		})
	}
}

func TestIndexConflicts(t *testing.T) {
	ep := func(addr, id, pod string) Endpoint {
		return Endpoint{Addr: addr, Identity: id, PodIP: ip(pod)}
	}
	tests := []struct {
		name      string
		svcs      []Service
		ambiguous []string // destinations that must be Ambiguous
		fine      []string // destinations that must not be
		errWant   []string // substrings of Set's error; none: Set must succeed
	}{
		{
			name: "two services on one virtual address",
			svcs: []Service{
				{Name: "a", VirtualIPs: []netip.Addr{ip("10.96.0.1")}, Ports: []ServicePort{{Port: 80}, {Port: 81}}},
				{Name: "b", VirtualIPs: []netip.Addr{ip("10.96.0.1")}, Ports: []ServicePort{{Port: 80}}},
			},
			ambiguous: []string{"10.96.0.1:80"},
			fine:      []string{"10.96.0.1:81"},
			errWant:   []string{`10.96.0.1:80: virtual address of services "a" and "b"`},
		},
		{
			name: "a service listing its address twice",
			svcs: []Service{{Name: "a", VirtualIPs: []netip.Addr{ip("10.96.0.1"), ip("::ffff:10.96.0.1")}, Ports: []ServicePort{{Port: 80}}}},
			fine: []string{"10.96.0.1:80"},
		},
		{
			name: "two peers on one pod IP",
			svcs: []Service{
				{Name: "a", Endpoints: []Endpoint{ep("10.1.0.1:4143", ordersID, "10.1.0.1")}},
				{Name: "b", Endpoints: []Endpoint{ep("10.1.0.1:4143", cartID, "10.1.0.1")}},
			},
			ambiguous: []string{"10.1.0.1:80", "10.1.0.1:4143"},
			errWant:   []string{"10.1.0.1: pod IP of endpoints 10.1.0.1:4143|" + ordersID + ` (service "a") and 10.1.0.1:4143|` + cartID + ` (service "b")`},
		},
		{
			name: "one peer in two services",
			svcs: []Service{
				{Name: "a", Endpoints: []Endpoint{ep("10.1.0.1:4143", ordersID, "10.1.0.1")}},
				{Name: "b", Endpoints: []Endpoint{ep("10.1.0.1:4143", ordersID, "10.1.0.1")}},
			},
			fine: []string{"10.1.0.1:80"},
		},
		{
			name: "a virtual IP that is a pod IP",
			svcs: []Service{
				{Name: "a", VirtualIPs: []netip.Addr{ip("10.1.0.1")}, Ports: []ServicePort{{Port: 80}}},
				{Name: "b", Endpoints: []Endpoint{ep("10.1.0.1:4143", ordersID, "10.1.0.1")}},
			},
			ambiguous: []string{"10.1.0.1:80", "10.1.0.1:8080"},
			errWant:   []string{`10.1.0.1: virtual IP of service "a" and pod IP of endpoint 10.1.0.1:4143|` + ordersID + ` (service "b")`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := NewIndex()
			err := ix.Set(tt.svcs)
			switch {
			case len(tt.errWant) == 0 && err != nil:
				t.Errorf("Set: %v", err)
			case len(tt.errWant) > 0 && err == nil:
				t.Errorf("Set succeeded, want an error")
			}
			for _, w := range tt.errWant {
				if err != nil && !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, d := range tt.ambiguous {
				if got := ix.Lookup(ap(d)); got.Kind != Ambiguous {
					t.Errorf("Lookup(%s) = %+v, want ambiguous", d, got)
				}
			}
			for _, d := range tt.fine {
				if got := ix.Lookup(ap(d)); got.Kind == Ambiguous || got.Kind == Unknown {
					t.Errorf("Lookup(%s) = %+v, want a service or endpoint", d, got)
				}
			}
		})
	}
}

func TestIndexSyncedAndReplaced(t *testing.T) {
	ix := NewIndex()
	select {
	case <-ix.Synced():
		t.Fatal("Synced before the first Set")
	default:
	}
	if got := ix.Lookup(ap("10.96.0.10:80")); got.Kind != Unknown {
		t.Fatalf("empty index: Lookup = %+v", got)
	}
	svcs := clusterServices()
	if err := ix.Set(svcs); err != nil {
		t.Fatal(err)
	}
	<-ix.Synced() // would block forever if not closed
	// Set copies: changing the input changes nothing.
	svcs[0].Endpoints[0].Ports[0] = 1
	svcs[0].VirtualIPs[0] = ip("10.96.0.99")
	if got := ix.Lookup(ap("10.1.0.5:8080")); got.Kind != EndpointTarget {
		t.Errorf("after changing Set's input: Lookup = %+v", got)
	}
	if err := ix.Set(nil); err != nil {
		t.Fatal(err)
	}
	if got := ix.Lookup(ap("10.96.0.10:80")); got.Kind != Unknown {
		t.Errorf("after Set(nil): Lookup = %+v", got)
	}
}

// TestIndexConcurrent runs lookups against Sets; the race detector
// checks the table's publication.
func TestIndexConcurrent(t *testing.T) {
	ix := NewIndex()
	svcs := clusterServices()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got := ix.Lookup(ap("10.96.0.10:80")); got.Kind != Unknown && got.Service != "orders.shop" {
					t.Errorf("Lookup = %+v", got)
				}
			}
		})
	}
	for i := range 200 {
		if i%2 == 0 {
			_ = ix.Set(svcs)
		} else {
			_ = ix.Set(nil)
		}
	}
	close(stop)
	wg.Wait()
}

// fakeCatalog hands out one LatestCatalog per watch.
type fakeCatalog struct {
	mu      sync.Mutex
	watches []*LatestCatalog
	started chan struct{}
	err     error
}

func (c *fakeCatalog) WatchCatalog(context.Context) (CatalogWatch, error) {
	if c.err != nil {
		return nil, c.err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := NewLatestCatalog()
	c.watches = append(c.watches, w)
	close(c.started)
	return fakeCatalogWatch{w}, nil
}

type fakeCatalogWatch struct{ *LatestCatalog }

func (w fakeCatalogWatch) Close() error { w.Shut(); return nil }

func TestIndexFollow(t *testing.T) {
	cat := &fakeCatalog{started: make(chan struct{})}
	ix := NewIndex()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ix.Follow(ctx, cat, nil) }()
	<-cat.started
	cat.watches[0].Push(clusterServices())
	<-ix.Synced()
	if got := ix.Lookup(ap("10.96.0.10:80")); got.Service != "orders.shop" {
		t.Errorf("Lookup = %+v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow after cancel = %v, want nil", err)
	}

	// The watch ending is an error; so is failing to start one.
	cat = &fakeCatalog{started: make(chan struct{})}
	go func() { done <- ix.Follow(t.Context(), cat, nil) }()
	<-cat.started
	cat.watches[0].Shut()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Follow after the watch closed = %v, want ErrClosed", err)
	}
	boom := errors.New("boom")
	if err := ix.Follow(t.Context(), &fakeCatalog{err: boom}, nil); !errors.Is(err, boom) {
		t.Errorf("Follow with a failing catalog = %v", err)
	}
}

func TestReady(t *testing.T) {
	a := Endpoint{Addr: "a:1", Identity: ordersID}
	b := Endpoint{Addr: "b:1", Identity: ordersID, NotReady: true}
	c := Endpoint{Addr: "c:1", Identity: ordersID}
	tests := []struct {
		name string
		in   []Endpoint
		want []Endpoint
	}{
		{"nil", nil, nil},
		{"all ready", []Endpoint{a, c}, []Endpoint{a, c}},
		{"one not ready", []Endpoint{a, b, c}, []Endpoint{a, c}},
		{"none ready", []Endpoint{b}, []Endpoint{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Ready(tt.in)
			if len(got) != len(tt.want) {
				t.Fatalf("Ready = %v, want %v", got, tt.want)
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Fatalf("Ready = %v, want %v", got, tt.want)
				}
			}
		})
	}
	all := []Endpoint{a, c}
	if n := testing.AllocsPerRun(100, func() { _ = Ready(all) }); n != 0 {
		t.Errorf("Ready of an all-ready set allocates %v times", n)
	}
	if got := Ready(all); &got[0] != &all[0] {
		t.Errorf("Ready of an all-ready set copied it")
	}
}

func TestEndpointEqual(t *testing.T) {
	base := Endpoint{Addr: "a:1", Identity: ordersID, Weight: 1, Zone: "z", Metadata: map[string]string{"k": "v"},
		PodIP: ip("10.1.0.1"), Ports: []uint16{80}}
	tests := []struct {
		name   string
		change func(*Endpoint)
		equal  bool
	}{
		{"same", func(*Endpoint) {}, true},
		{"copied metadata", func(e *Endpoint) { e.Metadata = map[string]string{"k": "v"} }, true},
		{"addr", func(e *Endpoint) { e.Addr = "b:1" }, false},
		{"identity", func(e *Endpoint) { e.Identity = cartID }, false},
		{"weight", func(e *Endpoint) { e.Weight = 2 }, false},
		{"zone", func(e *Endpoint) { e.Zone = "y" }, false},
		{"metadata value", func(e *Endpoint) { e.Metadata = map[string]string{"k": "w"} }, false},
		{"metadata key", func(e *Endpoint) { e.Metadata = map[string]string{"j": "v"} }, false},
		{"no metadata", func(e *Endpoint) { e.Metadata = nil }, false},
		{"pod IP", func(e *Endpoint) { e.PodIP = ip("10.1.0.2") }, false},
		{"no pod IP", func(e *Endpoint) { e.PodIP = netip.Addr{} }, false},
		{"ports", func(e *Endpoint) { e.Ports = []uint16{81} }, false},
		{"readiness", func(e *Endpoint) { e.NotReady = true }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.change(&o)
			if got := base.Equal(o); got != tt.equal {
				t.Errorf("Equal = %v, want %v", got, tt.equal)
			}
			if got := o.Equal(base); got != tt.equal {
				t.Errorf("reverse Equal = %v, want %v", got, tt.equal)
			}
		})
	}
}

// BenchmarkIndexLookup measures one lookup in a table of 1,000 services
// with 10 endpoints each, by kind of destination.
func BenchmarkIndexLookup(b *testing.B) {
	var svcs []Service
	for s := range 1000 {
		svc := Service{
			Name:       "svc-" + strconv.Itoa(s) + ".ns",
			VirtualIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(s >> 8), byte(s)})},
			Ports:      []ServicePort{{Port: 80, TargetPort: 8080}, {Port: 9090}},
		}
		for e := range 10 {
			n := s*10 + e
			pod := netip.AddrFrom4([4]byte{10, 1, byte(n >> 8), byte(n)})
			svc.Endpoints = append(svc.Endpoints, Endpoint{Addr: netip.AddrPortFrom(pod, 4143).String(), Identity: ordersID,
				PodIP: pod, Ports: []uint16{8080, 9090}})
		}
		svcs = append(svcs, svc)
	}
	ix := NewIndex()
	if err := ix.Set(svcs); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		dst  netip.AddrPort
		kind TargetKind
	}{
		{"service", ap("10.96.1.244:80"), ServiceTarget},
		{"endpoint", ap("10.1.10.100:9090"), EndpointTarget},
		{"unknown", ap("192.0.2.1:443"), Unknown},
		{"mapped", ap("[::ffff:10.96.1.244]:80"), ServiceTarget},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if got := ix.Lookup(bc.dst); got.Kind != bc.kind {
						b.Fatalf("Lookup(%s) = %v", bc.dst, got.Kind)
					}
				}
			})
		})
	}
}

// TestIndexFollowLogsConflictsOnce: a conflict is logged when it appears
// or changes, not on every update, and its end once.
func TestIndexFollowLogsConflictsOnce(t *testing.T) {
	logs := &testkit.LogBuffer{}
	cat := &fakeCatalog{started: make(chan struct{})}
	ix := NewIndex()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ix.Follow(ctx, cat, logs.Logger(slog.LevelInfo)) }()
	<-cat.started
	clash := func(extra string) []Service {
		return []Service{
			{Name: "a", VirtualIPs: []netip.Addr{ip("10.96.0.1")}, Ports: []ServicePort{{Port: 80}}},
			{Name: "b", VirtualIPs: []netip.Addr{ip("10.96.0.1")}, Ports: []ServicePort{{Port: 80}}},
			{Name: extra},
		}
	}
	// Each push waits until the index has it, so none is coalesced away.
	push := func(svcs []Service, cond func() bool) {
		cat.watches[0].Push(svcs)
		testkit.Eventually(t, "the index to take the update", cond)
	}
	ambiguous := func() bool { return ix.Lookup(ap("10.96.0.1:80")).Kind == Ambiguous }
	push(clash("x"), ambiguous)
	push([]Service{{Name: "a", VirtualIPs: []netip.Addr{ip("10.96.0.2")}, Ports: []ServicePort{{Port: 80}}}}, func() bool {
		return ix.Lookup(ap("10.96.0.2:80")).Kind == ServiceTarget
	})
	push(clash("y"), ambiguous) // the same conflict again after it ended
	push(append(clash("z"), Service{Name: "q", VirtualIPs: []netip.Addr{ip("10.96.0.3")}, Ports: []ServicePort{{Port: 1}}}),
		func() bool { return ix.Lookup(ap("10.96.0.3:1")).Kind == ServiceTarget }) // unchanged conflict: not logged
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(logs.Lines("discovery: address index has conflicts")); n != 2 {
		t.Errorf("conflict logged %d times, want 2:\n%s", n, logs)
	}
	if n := len(logs.Lines("discovery: address index conflicts resolved")); n != 1 {
		t.Errorf("resolution logged %d times, want 1:\n%s", n, logs)
	}
}
