// Package balance picks which endpoint of a service gets the next request
// or connection: power of two choices over a weighted load estimate that
// combines outstanding work and a peak-sensitive latency average (the
// "P2C + peak-EWMA" balancer Linkerd and Finagle use).
package balance

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
)

// decay is how fast the latency estimate forgets old samples.
const decay = 10 * time.Second

// defaultRTT is the latency assumed for an endpoint with no samples yet,
// small so that new endpoints get tried.
const defaultRTT = time.Millisecond

// Balancer keeps per-endpoint load state across calls. It is safe for
// concurrent use; state for endpoints that are no longer offered is
// dropped lazily.
type Balancer struct {
	mu    sync.Mutex
	stats map[string]*stats
	now   func() time.Time
}

type stats struct {
	pending int
	ewma    float64 // nanoseconds
	stamp   time.Time
	used    time.Time
}

// New returns an empty balancer.
func New() *Balancer { return &Balancer{stats: make(map[string]*stats), now: time.Now} }

// Pick chooses among eps the endpoint with the lower cost of two random
// candidates, skipping those for which skip returns true. It returns a
// done function that must be called once the work finishes (ok=false on
// failure, which counts as a slow response so the endpoint is avoided).
func (b *Balancer) Pick(eps []discovery.Endpoint, skip func(discovery.Endpoint) bool) (discovery.Endpoint, func(ok bool), bool) {
	idx := make([]int, 0, len(eps))
	for i := range eps {
		if skip == nil || !skip(eps[i]) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return discovery.Endpoint{}, nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	choice := idx[0]
	if len(idx) > 1 {
		i := rand.IntN(len(idx))
		j := rand.IntN(len(idx) - 1)
		if j >= i {
			j++
		}
		a, c := eps[idx[i]], eps[idx[j]]
		if b.cost(c, now) < b.cost(a, now) {
			choice = idx[j]
		} else {
			choice = idx[i]
		}
	}
	ep := eps[choice]
	key := ep.Key()
	st := b.stat(key, now)
	st.pending++
	st.used = now
	start := now
	b.gc(now)
	return ep, func(ok bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		st.pending--
		rtt := b.now().Sub(start)
		if !ok {
			rtt = max(rtt, time.Second)
		}
		b.observe(st, rtt, b.now())
	}, true
}

func (b *Balancer) stat(key string, now time.Time) *stats {
	st := b.stats[key]
	if st == nil {
		st = &stats{ewma: float64(defaultRTT), stamp: now}
		b.stats[key] = st
	}
	return st
}

// cost is latency × (outstanding+1) / weight.
func (b *Balancer) cost(ep discovery.Endpoint, now time.Time) float64 {
	st := b.stats[ep.Key()]
	lat, pending := float64(defaultRTT), 0
	if st != nil {
		lat, pending = b.decayed(st, now), st.pending
	}
	w := float64(ep.Weight)
	if w == 0 {
		w = 1
	}
	return lat * float64(pending+1) / w
}

func (b *Balancer) decayed(st *stats, now time.Time) float64 {
	dt := float64(now.Sub(st.stamp))
	return st.ewma * math.Exp(-dt/float64(decay))
}

// observe applies peak-EWMA: a sample above the average replaces it at
// once, a lower one is blended in with exponential decay.
func (b *Balancer) observe(st *stats, rtt time.Duration, now time.Time) {
	cur := b.decayed(st, now)
	s := float64(rtt)
	if s > cur {
		st.ewma = s
	} else {
		w := math.Exp(-float64(now.Sub(st.stamp)) / float64(decay))
		st.ewma = cur*w + s*(1-w)
	}
	st.stamp = now
}

// gc drops state of endpoints unused for a while so churn cannot grow the
// map without bound.
func (b *Balancer) gc(now time.Time) {
	if len(b.stats) < 64 {
		return
	}
	for k, st := range b.stats {
		if st.pending == 0 && now.Sub(st.used) > time.Minute {
			delete(b.stats, k)
		}
	}
}
