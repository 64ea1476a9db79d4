// Package balance picks which endpoint of a service gets the next request
// or connection: power of two choices over a weighted load estimate that
// combines outstanding work and a peak-sensitive latency average (the
// "P2C + peak-EWMA" balancer Linkerd and Finagle use).
//
// The balancer knows endpoints only by key and weight, and learns from
// the outcomes its caller reports: what a latency sample means (a whole
// request, a tunnel's setup) is the caller's choice.
package balance

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// decay is how fast the latency estimate forgets old samples.
const decay = 10 * time.Second

// defaultRTT is the latency assumed for an endpoint with no samples yet,
// small so that new endpoints get tried.
const defaultRTT = time.Millisecond

// failedRTT is the least latency a failure counts as, so that a failing
// endpoint is avoided even when it fails fast.
const failedRTT = time.Second

// Endpoint is what the balancer needs to know of a candidate.
type Endpoint struct {
	// Key identifies the endpoint across picks (discovery.Endpoint.Key).
	Key string
	// Weight scales the endpoint's share; 0 means 1.
	Weight uint32
}

// Outcome is what one picked unit of work showed about its endpoint.
type Outcome struct {
	// Latency is the sample: how long the work took to be answered.
	Latency time.Duration
	// Failed marks work the endpoint did not serve; it counts as at
	// least failedRTT.
	Failed bool
}

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

// Pick returns the index in eps of the one with the lower cost of two
// random candidates, skipping those for which skip returns true (skip may
// be nil); ok is false when none is left. The pick counts as outstanding
// work on the endpoint until its Done, which must follow exactly once.
func (b *Balancer) Pick(eps []Endpoint, skip func(i int) bool) (int, bool) {
	idx := make([]int, 0, len(eps))
	for i := range eps {
		if skip == nil || !skip(i) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return 0, false
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
		if b.cost(eps[idx[j]], now) < b.cost(eps[idx[i]], now) {
			choice = idx[j]
		} else {
			choice = idx[i]
		}
	}
	st := b.stat(eps[choice].Key, now)
	st.pending++
	st.used = now
	b.gc(now)
	return choice, true
}

// Observe feeds the outcome of work picked for ep into its latency
// estimate. The work may go on (a tunnel, once open).
func (b *Balancer) Observe(ep Endpoint, o Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	rtt := o.Latency
	if o.Failed {
		rtt = max(rtt, failedRTT)
	}
	b.observe(b.stat(ep.Key, now), rtt, now)
}

// Done ends the outstanding work of one Pick of ep.
func (b *Balancer) Done(ep Endpoint) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	st := b.stat(ep.Key, now)
	st.used = now
	if st.pending > 0 {
		st.pending--
	}
}

func (b *Balancer) stat(key string, now time.Time) *stats {
	st := b.stats[key]
	if st == nil {
		st = &stats{ewma: float64(defaultRTT), stamp: now, used: now}
		b.stats[key] = st
	}
	return st
}

// cost is latency × (outstanding+1) / weight.
func (b *Balancer) cost(ep Endpoint, now time.Time) float64 {
	st := b.stats[ep.Key]
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
