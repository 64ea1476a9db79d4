package control_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// catalogSource is a Source whose catalog the test sets; it has no
// watched services.
type catalogSource struct {
	mu      sync.Mutex
	cat     control.Catalog
	changed chan struct{}
}

func newCatalogSource(cat control.Catalog) *catalogSource {
	return &catalogSource{cat: cat, changed: make(chan struct{})}
}

func (s *catalogSource) Subscribe(string) control.Subscription {
	return fixedSub{&control.EndpointSet{}}
}

func (s *catalogSource) Catalog() (control.Catalog, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cat, s.changed
}

// set publishes a copy of the catalog with svc put in (or, with no
// endpoints and no ports, taken out), as kube.Source does.
func (s *catalogSource) set(name string, svc *controlpb.Service) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.cat)
	if svc == nil {
		delete(next, name)
	} else {
		next[name] = svc
	}
	s.cat = next
	close(s.changed)
	s.changed = make(chan struct{})
}

// bigService is a catalog entry of n endpoints; zone tells versions apart.
func bigService(name string, n int, zone string) *controlpb.Service {
	svc := &controlpb.Service{Name: name, VirtualIps: []string{"10.96.0.1"}, Ports: []*controlpb.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}}
	for j := range n {
		svc.Endpoints = append(svc.Endpoints, &controlpb.Endpoint{
			Address: fmt.Sprintf("10.244.0.%d:4143", j+1), Identity: "spiffe://td.test/ns/bench/sa/" + name,
			Weight: 1, Zone: zone, PodIp: fmt.Sprintf("10.244.0.%d", j+1), Ready: true,
			Ports: []*controlpb.Port{{Name: "http", Port: 8080, Protocol: "TCP"}},
		})
	}
	return svc
}

// serveDiscovery serves src's Discovery service on loopback gRPC, with
// no admission, and returns a client.
func serveDiscovery(tb testing.TB, src control.Source) controlpb.DiscoveryClient {
	tb.Helper()
	srv := grpc.NewServer()
	controlpb.RegisterDiscoveryServer(srv, control.NewDiscoveryServer(src, func(context.Context) error { return nil }, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return controlpb.NewDiscoveryClient(conn)
}

// BenchmarkWatchIndexFanout: one service of a 1,000-service catalog
// changes, and 200 WatchIndex streams (issue 14's scale) each receive the
// change; an operation is one change delivered to all of them. The cost
// per change must grow with the streams, not with streams × services.
func BenchmarkWatchIndexFanout(b *testing.B) {
	const services, endpoints, streams = 1000, 10, 200
	cat := control.Catalog{}
	for i := range services {
		name := fmt.Sprintf("svc-%04d.bench", i)
		cat[name] = bigService(name, endpoints, "z")
	}
	src := newCatalogSource(cat)
	client := serveDiscovery(b, src)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan struct{}, streams)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range streams {
		stream, err := client.WatchIndex(ctx, &controlpb.WatchIndexRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
				got <- struct{}{}
			}
		})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("svc-%04d.bench", i%services)
		src.set(name, bigService(name, endpoints, fmt.Sprint(i)))
		for range streams {
			<-got
		}
	}
}

// TestWatchIndexStreams: several WatchIndex streams over gRPC, which share
// the work of each change, each end with the Source's catalog after
// services are added, changed and removed, each change arriving as one
// message; a stream opened afterwards starts from that catalog.
func TestWatchIndexStreams(t *testing.T) {
	testkit.CheckLeaks(t)
	ctx := testkit.HangCtx(t)
	src := newCatalogSource(control.Catalog{"a.ns": bigService("a.ns", 2, "z")})
	client := serveDiscovery(t, src)
	mirrors := make([]map[string]*controlpb.Service, 3)
	streams := make([]grpc.ServerStreamingClient[controlpb.IndexUpdate], len(mirrors))
	recv := func(i int) *controlpb.IndexUpdate {
		t.Helper()
		msg, err := streams[i].Recv()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		for _, svc := range msg.GetServices() {
			if msg.GetKind() == controlpb.Kind_REMOVE {
				delete(mirrors[i], svc.GetName())
			} else {
				mirrors[i][svc.GetName()] = svc
			}
		}
		return msg
	}
	open := func(i int) {
		t.Helper()
		var err error
		if streams[i], err = client.WatchIndex(ctx, &controlpb.WatchIndexRequest{}); err != nil {
			t.Fatal(err)
		}
		mirrors[i] = map[string]*controlpb.Service{}
		if msg := recv(i); msg.GetKind() != controlpb.Kind_SNAPSHOT {
			t.Fatalf("stream %d began with %v", i, msg.GetKind())
		}
	}
	check := func(i int) {
		t.Helper()
		want, _ := src.Catalog()
		if !maps.EqualFunc(mirrors[i], want, func(a, b *controlpb.Service) bool { return proto.Equal(a, b) }) {
			t.Fatalf("stream %d holds %v, want %v", i, slices.Sorted(maps.Keys(mirrors[i])), slices.Sorted(maps.Keys(want)))
		}
	}
	open(0)
	open(1)
	for step, change := range []func(){
		func() { src.set("b.ns", bigService("b.ns", 3, "z")) },
		func() { src.set("a.ns", bigService("a.ns", 2, "y")) },
		func() { src.set("a.ns", nil) },
	} {
		change()
		for i := range 2 {
			recv(i)
			check(i)
		}
		t.Logf("step %d: both streams hold the catalog", step)
	}
	open(2)
	check(2)
}
