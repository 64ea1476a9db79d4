package kube_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/quicmesh/quicmesh/discovery"
	discoverycp "github.com/quicmesh/quicmesh/discovery/controlplane"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

// TestSidecarModel: a Service with a cluster IP and an EndpointSlice with
// one ready and one not-ready endpoint, created in the API server, arrive
// in the sidecar's resolver and address Index as the cluster has them:
// the virtual IP:port is the service, each pod IP:port its endpoint
// (not-ready included: an app that dials a pod chose it), and the
// not-ready endpoint is not balanced to.
var modelRuns atomic.Uint32

func TestSidecarModel(t *testing.T) {
	c := kubetest.Get(t)
	w := world{t, c, c.Namespace(t)}
	resolver := discoverycp.New(discoveryClient(t, c))
	cache := discovery.NewCache(resolver, nil)
	t.Cleanup(func() { cache.Close() })
	ix := discovery.NewIndex()
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan error, 1)
	go func() { followed <- ix.Follow(ctx, resolver, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-followed; err != nil {
			t.Errorf("Follow: %v", err)
		}
	})

	// The objects of earlier runs (-count) stay in the API server (no
	// namespace controller), and a pod IP claimed by two endpoints is
	// ambiguous in the Index: each run takes its own pod IPs.
	n := modelRuns.Add(1)
	ip0, ip1 := fmt.Sprintf("100.64.%d.10", n%256), fmt.Sprintf("100.64.%d.11", n%256)
	w.pod("api-0", "api", 4143)
	w.pod("api-1", "api", 4143)
	w.createSlice(w.sliceObject("api", "api-a", 8080,
		ep{pod: "api-0", ip: ip0, ready: true},
		ep{pod: "api-1", ip: ip1, ready: false}))
	svc, err := c.Admin.CoreV1().Services(w.ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: w.ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	name := "api." + w.ns
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	id := "spiffe://" + trustDomain + "/ns/" + w.ns + "/sa/api"
	ready := discovery.Endpoint{Addr: ip0 + ":4143", Identity: id, Weight: 1,
		PodIP: netip.MustParseAddr(ip0), Ports: []uint16{8080}}
	notReady := ready
	notReady.Addr, notReady.PodIP, notReady.NotReady = ip1+":4143", netip.MustParseAddr(ip1), true

	lookups := []struct {
		dst  netip.AddrPort
		want discovery.Target
	}{
		{netip.AddrPortFrom(vip, 80), discovery.Target{Kind: discovery.ServiceTarget, Service: name, Port: discovery.ServicePort{Name: "http", Port: 80, TargetPort: 8080}}},
		{netip.MustParseAddrPort(ip0 + ":8080"), discovery.Target{Kind: discovery.EndpointTarget, Service: name, Endpoint: ready}},
		{netip.MustParseAddrPort(ip1 + ":8080"), discovery.Target{Kind: discovery.EndpointTarget, Service: name, Endpoint: notReady}},
		{netip.AddrPortFrom(vip, 8080), discovery.Target{}},
		{netip.MustParseAddrPort(ip0 + ":9090"), discovery.Target{}},
	}
	// The Index has no change notification; the bound from an
	// API change to the sidecar is a second.
	deadline := time.Now().Add(time.Second)
	for i := 0; i < len(lookups); {
		got := ix.Lookup(lookups[i].dst)
		if got.Kind == lookups[i].want.Kind && got.Service == lookups[i].want.Service && got.Port == lookups[i].want.Port &&
			got.Endpoint.Equal(lookups[i].want.Endpoint) {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("Lookup(%v) = %+v, want %+v within 1 s", lookups[i].dst, got, lookups[i].want)
		}
		time.Sleep(5 * time.Millisecond)
	}

	eps, err := cache.Endpoints(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || !eps[0].Equal(ready) {
		t.Fatalf("Cache.Endpoints(%s) = %+v, want only the ready %+v", name, eps, ready)
	}
}
