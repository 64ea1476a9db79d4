package kube_test

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/quicmesh/quicmesh/discovery"
	discoverycp "github.com/quicmesh/quicmesh/discovery/controlplane"
	"github.com/quicmesh/quicmesh/internal/kubetest"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

var latencyRuns atomic.Uint32

// TestEndpointSliceChangeLatency: issue 14's record of the time from an
// EndpointSlice change (the Update call, as a controller makes it) to the
// sidecar's discovery.Cache serving it, through the control plane's
// Source, its Discovery service over loopback gRPC and
// discovery/controlplane's resolver (the cache is polled every 0.2 ms),
// over 100 changes that alternately add and remove a ready endpoint. It
// logs p50/p99/max, and the Update call's own share, for
// docs/benchmarks.md and fails if p99 passes the 1 s.
func TestEndpointSliceChangeLatency(t *testing.T) {
	const changes = 100
	c := kubetest.Get(t)
	w := world{t, c, c.Namespace(t)}
	cache := discovery.NewCache(discoverycp.New(discoveryClient(t, c)), nil)
	t.Cleanup(func() { cache.Close() })
	n := latencyRuns.Add(1)
	ip0, ip1 := fmt.Sprintf("100.65.%d.10", n%256), fmt.Sprintf("100.65.%d.11", n%256)
	w.pod("lat-0", "lat", 4143)
	w.pod("lat-1", "lat", 4143)
	one := w.sliceObject("lat", "lat-a", 8080, ep{pod: "lat-0", ip: ip0, ready: true})
	two := w.sliceObject("lat", "lat-a", 8080, ep{pod: "lat-0", ip: ip0, ready: true}, ep{pod: "lat-1", ip: ip1, ready: true})
	w.createSlice(one)
	w.service("lat", 80)
	name := "lat." + w.ns
	count := func() int {
		eps, err := cache.Endpoints(context.Background(), name)
		if err != nil {
			return -1
		}
		return len(eps)
	}
	waitFor := func(want int) {
		deadline := testkit.HangGuard(t)
		for count() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the cache never served %d endpoints of %s", want, name)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	waitFor(1)
	sliceAPI := w.c.Admin.DiscoveryV1().EndpointSlices(w.ns)
	cur, err := sliceAPI.Get(context.Background(), one.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	version := cur.ResourceVersion
	lat := make([]time.Duration, 0, changes)
	writes := make([]time.Duration, 0, changes)
	for i := range changes {
		next, want := two.DeepCopy(), 2
		if i%2 == 1 {
			next, want = one.DeepCopy(), 1
		}
		next.ResourceVersion = version
		start := time.Now()
		out, err := sliceAPI.Update(context.Background(), next, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writes = append(writes, time.Since(start))
		version = out.ResourceVersion
		waitFor(want)
		lat = append(lat, time.Since(start))
	}
	p50, p99, worst := percentiles(lat)
	w50, w99, _ := percentiles(writes)
	t.Logf("EndpointSlice change -> sidecar cache over %d changes: p50 %v, p99 %v, max %v (the Update call itself: p50 %v, p99 %v)", changes,
		p50, p99, worst, w50, w99)
	if p99 > time.Second {
		t.Errorf("p99 %v: more than issue 14's 1 s from an EndpointSlice change to the sidecar", p99)
	}
}

// percentiles returns the p50, p99 and max of ds (sorted in place),
// rounded to 0.1 ms.
func percentiles(ds []time.Duration) (p50, p99, worst time.Duration) {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return r(ds[(len(ds)-1)/2]), r(ds[(len(ds)*99+99)/100-1]), r(ds[len(ds)-1])
}
