package balance

import (
	"testing"
	"time"
)

func eps(n int) []Endpoint {
	out := make([]Endpoint, n)
	for i := range out {
		out[i] = Endpoint{Key: string(rune('a'+i)) + ":1|spiffe://t/x"}
	}
	return out
}

func TestPickSkipsAndEmpty(t *testing.T) {
	b := New()
	if _, ok := b.Pick(nil, nil); ok {
		t.Fatal("Pick on empty set succeeded")
	}
	set := eps(3)
	for range 50 {
		i, ok := b.Pick(set, func(i int) bool { return i != 1 })
		if !ok || i != 1 {
			t.Fatalf("Pick = %d %v, want 1", i, ok)
		}
		b.Observe(set[i], Outcome{Latency: time.Millisecond})
		b.Done(set[i])
	}
	if _, ok := b.Pick(set, func(int) bool { return true }); ok {
		t.Fatal("Pick with everything skipped succeeded")
	}
}

func TestPickAvoidsLoadedSlowAndFailed(t *testing.T) {
	tests := []struct {
		name  string
		setup func(b *Balancer, set []Endpoint)
	}{
		{"outstanding", func(b *Balancer, set []Endpoint) {
			for range 100 {
				b.Pick(set[:1], nil)
			}
		}},
		{"slow", func(b *Balancer, set []Endpoint) {
			b.Pick(set[:1], nil)
			b.Observe(set[0], Outcome{Latency: time.Second})
			b.Done(set[0])
		}},
		// A failure that came back fast still counts as slow.
		{"failed", func(b *Balancer, set []Endpoint) {
			b.Pick(set[:1], nil)
			b.Observe(set[0], Outcome{Latency: time.Microsecond, Failed: true})
			b.Done(set[0])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New()
			set := eps(2)
			tt.setup(b, set)
			for range 100 {
				i, _ := b.Pick(set, nil)
				b.Observe(set[i], Outcome{Latency: time.Millisecond})
				b.Done(set[i])
				if i == 0 {
					t.Fatalf("picked the %s endpoint", tt.name)
				}
			}
		})
	}
}

// Work is outstanding from Pick to Done, whatever was observed meanwhile:
// open tunnels with a fast setup still count as load on their endpoint.
func TestOutstandingUntilDone(t *testing.T) {
	b := New()
	set := eps(2)
	for range 10 {
		b.Pick(set[:1], nil)
		b.Observe(set[0], Outcome{Latency: time.Microsecond})
	}
	if p := b.stats[set[0].Key].pending; p != 10 {
		t.Fatalf("pending after observing ten open tunnels = %d, want 10", p)
	}
	for range 100 {
		i, _ := b.Pick(set, nil)
		b.Done(set[i])
		if i == 0 {
			t.Fatal("picked the endpoint carrying ten open tunnels")
		}
	}
	for range 10 {
		b.Done(set[0])
	}
	if p := b.stats[set[0].Key].pending; p != 0 {
		t.Fatalf("pending after every Done = %d, want 0", p)
	}
	// A stray Done does not drive the count negative.
	b.Done(set[0])
	if p := b.stats[set[0].Key].pending; p != 0 {
		t.Fatalf("pending after a stray Done = %d, want 0", p)
	}
}

func TestWeightsAndSpread(t *testing.T) {
	b := New()
	clock := time.Unix(0, 0)
	b.now = func() time.Time { return clock }
	set := eps(4)
	set[3].Weight = 3
	counts := map[int]int{}
	// Equal latency everywhere, four requests in flight at a time.
	var inflight []int
	for range 4000 {
		i, _ := b.Pick(set, nil)
		counts[i]++
		inflight = append(inflight, i)
		if len(inflight) == 4 {
			clock = clock.Add(time.Millisecond)
			b.Observe(set[inflight[0]], Outcome{Latency: time.Millisecond})
			b.Done(set[inflight[0]])
			inflight = inflight[1:]
		}
	}
	if counts[3] <= counts[0] {
		t.Fatalf("weight 3 endpoint got no more than weight 1: %v", counts)
	}
	for i := range set {
		if counts[i] < 500 {
			t.Fatalf("endpoint %d got %d of 4000 picks: %v", i, counts[i], counts)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	bal := New()
	set := eps(8)
	for b.Loop() {
		i, _ := bal.Pick(set, nil)
		bal.Observe(set[i], Outcome{Latency: time.Millisecond})
		bal.Done(set[i])
	}
}
