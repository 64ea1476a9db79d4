package balance

import (
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
)

func eps(n int) []discovery.Endpoint {
	out := make([]discovery.Endpoint, n)
	for i := range out {
		out[i] = discovery.Endpoint{Addr: string(rune('a'+i)) + ":1", Identity: "spiffe://t/x"}
	}
	return out
}

func TestPickSkipsAndEmpty(t *testing.T) {
	b := New()
	if _, _, ok := b.Pick(nil, nil); ok {
		t.Fatal("Pick on empty set succeeded")
	}
	set := eps(3)
	for range 50 {
		ep, done, ok := b.Pick(set, func(e discovery.Endpoint) bool { return e.Addr != "b:1" })
		if !ok || ep.Addr != "b:1" {
			t.Fatalf("Pick = %v %v, want b:1", ep, ok)
		}
		done(true)
	}
	if _, _, ok := b.Pick(set, func(discovery.Endpoint) bool { return true }); ok {
		t.Fatal("Pick with everything skipped succeeded")
	}
}

func TestPickAvoidsLoadedAndSlow(t *testing.T) {
	tests := []struct {
		name  string
		setup func(b *Balancer, set []discovery.Endpoint)
	}{
		{"outstanding", func(b *Balancer, set []discovery.Endpoint) {
			b.stat(set[0].Key(), b.now()).pending = 100
		}},
		{"slow", func(b *Balancer, set []discovery.Endpoint) {
			b.stat(set[0].Key(), b.now()).ewma = float64(time.Second)
		}},
		{"failed", func(b *Balancer, set []discovery.Endpoint) {
			_, done, _ := b.Pick(set[:1], nil)
			done(false)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New()
			set := eps(2)
			tt.setup(b, set)
			for range 100 {
				ep, done, _ := b.Pick(set, nil)
				done(true)
				if ep.Addr == set[0].Addr {
					t.Fatalf("picked the %s endpoint", tt.name)
				}
			}
		})
	}
}

func TestWeightsAndSpread(t *testing.T) {
	b := New()
	clock := time.Unix(0, 0)
	b.now = func() time.Time { return clock }
	set := eps(4)
	set[3].Weight = 3
	counts := map[string]int{}
	// Equal latency everywhere, four requests in flight at a time.
	var inflight []func(bool)
	for range 4000 {
		ep, done, _ := b.Pick(set, nil)
		counts[ep.Addr]++
		inflight = append(inflight, done)
		if len(inflight) == 4 {
			clock = clock.Add(time.Millisecond)
			inflight[0](true)
			inflight = inflight[1:]
		}
	}
	if counts["d:1"] <= counts["a:1"] {
		t.Fatalf("weight 3 endpoint got no more than weight 1: %v", counts)
	}
	for _, e := range set {
		if counts[e.Addr] < 500 {
			t.Fatalf("endpoint %s got %d of 4000 picks: %v", e.Addr, counts[e.Addr], counts)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	bal := New()
	set := eps(8)
	for b.Loop() {
		_, done, _ := bal.Pick(set, nil)
		done(true)
	}
}
