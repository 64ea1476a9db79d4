package gateway

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestExportsRouteOnlyExportedServices(t *testing.T) {
	testkit.CheckLeaks(t)
	id := "spiffe://west.local/ns/shop/sa/orders"
	e1 := discovery.Endpoint{Addr: "127.0.0.1:4001", Identity: id}
	e2 := discovery.Endpoint{Addr: "127.0.0.1:4002", Identity: id}
	secret := discovery.Endpoint{Addr: "127.0.0.1:4009", Identity: "spiffe://west.local/ns/shop/sa/db"}
	res := static.NewFromMap(map[string][]discovery.Endpoint{"orders.shop": {e1, e2}, "db.shop": {secret}})
	t.Cleanup(func() { res.Close() })
	x := NewExports(res, []string{"orders.shop", "later.shop"}, testkit.DebugLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-x.Ready()

	route := func(name string) (netip.AddrPort, error) { return x.Route(name) }
	n1, n2 := EndpointName(e1), EndpointName(e2)
	if ap, err := route(n1); err != nil || ap.String() != e1.Addr {
		t.Errorf("Route(%q) = %v, %v; want %s", n1, ap, err, e1.Addr)
	}
	if ap, err := route(n2); err != nil || ap.String() != e2.Addr {
		t.Errorf("Route(%q) = %v, %v; want %s", n2, ap, err, e2.Addr)
	}
	svc, _ := ServiceName("orders.shop")
	seen := map[string]bool{}
	for range 4 {
		ap, err := route(svc)
		if err != nil {
			t.Fatal(err)
		}
		seen[ap.String()] = true
	}
	if len(seen) != 2 {
		t.Errorf("the service's name reached %v, want both endpoints in turn", seen)
	}
	// Known to discovery but not exported: the export list is the
	// gateway's allow-list.
	if _, err := route(EndpointName(secret)); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("Route(endpoint of a service not exported) = %v, want ErrNoEndpoint", err)
	}
	dbName, _ := ServiceName("db.shop")
	if _, err := route(dbName); !errors.Is(err, ErrNotExported) {
		t.Errorf("Route(service not exported) = %v, want ErrNotExported", err)
	}
	if _, err := route("test.local"); !errors.Is(err, ErrNotGatewayName) {
		t.Errorf("Route(a trust domain) = %v, want ErrNotGatewayName", err)
	}

	// Discovery changes are followed: e1 goes, a service exported before
	// it existed appears.
	later := discovery.Endpoint{Addr: "127.0.0.1:4005", Identity: "spiffe://west.local/ns/shop/sa/later"}
	res.Set(map[string][]discovery.Endpoint{"orders.shop": {e2}, "later.shop": {later}})
	testkit.Eventually(t, "e1 gone from the routes", func() bool {
		_, err := route(n1)
		return errors.Is(err, ErrNoEndpoint)
	})
	ln := EndpointName(later)
	testkit.Eventually(t, "later.shop routed", func() bool {
		ap, err := route(ln)
		return err == nil && ap.String() == later.Addr
	})
	res.Set(map[string][]discovery.Endpoint{"orders.shop": {}})
	testkit.Eventually(t, "no ready endpoint", func() bool {
		_, err := route(svc)
		return errors.Is(err, ErrNoEndpoint)
	})
}
