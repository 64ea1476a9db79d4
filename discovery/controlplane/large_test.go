package controlplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/controlplane"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// staticSource is a control.Source that never changes.
type staticSource struct{ cat control.Catalog }

func (s staticSource) Subscribe(name string) control.Subscription {
	set := &control.EndpointSet{}
	if svc, ok := s.cat[name]; ok {
		set = &control.EndpointSet{Exists: true, Endpoints: map[string]*controlpb.Endpoint{}}
		for _, ep := range svc.GetEndpoints() {
			set.Endpoints[control.EndpointKey(ep)] = ep
		}
	}
	return staticSub{set}
}

func (s staticSource) Catalog() (control.Catalog, <-chan struct{}) { return s.cat, make(chan struct{}) }

type staticSub struct{ set *control.EndpointSet }

func (s staticSub) Current() (*control.EndpointSet, <-chan struct{}) {
	return s.set, make(chan struct{})
}
func (staticSub) Close() {}

// service is a catalog entry shaped as kube.Source makes them, with n
// endpoints.
func service(name string, n int) *controlpb.Service {
	svc := &controlpb.Service{Name: name, VirtualIps: []string{"10.96.12.34"}, Ports: []*controlpb.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}}
	for j := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", 100+j/65536, j/256%256, j%256)
		svc.Endpoints = append(svc.Endpoints, &controlpb.Endpoint{
			Address: ip + ":4143", Identity: "spiffe://cluster.local/ns/default/sa/" + name[:len(name)-len(".default")],
			Weight: 1, Zone: "zone-a", PodIp: ip, Ready: true,
			Ports: []*controlpb.Port{{Name: "http", Port: 8080, Protocol: "TCP"}},
		})
	}
	return svc
}

// TestLargeSnapshots: a catalog of 4,000 services × 10 endpoints, and one
// service of 40,000 endpoints, each a snapshot of more than gRPC's default
// 4 MiB receive limit, reach the sidecar whole: a cluster of that size
// must not leave the transparent path unsynced and the service unresolved.
func TestLargeSnapshots(t *testing.T) {
	testkit.CheckLeaks(t)
	ctx := testkit.HangCtx(t)
	cat := control.Catalog{}
	for i := range 4000 {
		name := fmt.Sprintf("svc-%04d.default", i)
		cat[name] = service(name, 10)
	}
	cat["huge.default"] = service("huge.default", 40000)
	var snapshot controlpb.IndexUpdate
	for _, svc := range cat {
		if svc.GetName() != "huge.default" {
			snapshot.Services = append(snapshot.Services, svc)
		}
	}
	const grpcDefault = 4 << 20
	if n, m := proto.Size(&snapshot), proto.Size(&controlpb.EndpointUpdate{Endpoints: cat["huge.default"].GetEndpoints()}); n <= grpcDefault || m <= grpcDefault {
		t.Fatalf("the snapshots are %d and %d bytes: the test needs both over %d", n, m, grpcDefault)
	}

	srv := grpc.NewServer()
	controlpb.RegisterDiscoveryServer(srv, control.NewDiscoveryServer(staticSource{cat}, func(context.Context) error { return nil }, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	// A failed catalog stream is logged and retried for ever: the first
	// failure fails the test.
	failed := make(chan string, 1)
	logger := slog.New(onWarn{failed})
	r := controlplane.NewWithOptions(controlpb.NewDiscoveryClient(conn), controlplane.Options{Logger: logger})

	w, err := r.Resolve(ctx, "huge.default")
	if err != nil {
		t.Fatalf("resolving a service of 40,000 endpoints: %v", err)
	}
	u, err := w.Next(ctx)
	w.Close()
	if err != nil || u.Kind != discovery.Reset || len(u.Endpoints) != 40000 {
		t.Fatalf("first update: %v with %d endpoints (%v), want a reset of 40000", u.Kind, len(u.Endpoints), err)
	}

	cw, err := r.WatchCatalog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cw.Close()
	got := make(chan int, 1)
	go func() {
		svcs, err := cw.Next(ctx)
		if err != nil {
			got <- -1
			return
		}
		got <- len(svcs)
	}()
	select {
	case n := <-got:
		if n != len(cat) {
			t.Fatalf("the catalog has %d services, want %d", n, len(cat))
		}
	case msg := <-failed:
		t.Fatalf("the catalog stream failed: %s", msg)
	}
}

// onWarn sends the first warning's message and attributes.
type onWarn struct{ ch chan<- string }

func (h onWarn) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h onWarn) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
	select {
	case h.ch <- msg:
	default:
	}
	return nil
}
func (h onWarn) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onWarn) WithGroup(string) slog.Handler      { return h }
