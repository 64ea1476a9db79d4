package balance

import (
	"sync"
	"time"
)

// Picker is what Accrual wraps: a balancer choosing among endpoints and
// learning from outcomes (*Balancer implements it).
type Picker interface {
	Pick(eps []Endpoint, skip func(i int) bool) (int, bool)
	Observe(ep Endpoint, o Outcome)
	Done(ep Endpoint)
}

// AccrualConfig tunes failure accrual; the zero value takes every
// default.
type AccrualConfig struct {
	// ConsecutiveFailures ejects an endpoint after this many failed
	// outcomes in a row. Default 5.
	ConsecutiveFailures int
	// MinEjection is the first ejection's length; each further ejection
	// without a success in between doubles it, up to MaxEjection.
	// Defaults 1s and 30s.
	MinEjection time.Duration
	MaxEjection time.Duration
	// OnEject, if set, is called (without locks held) when an endpoint
	// is ejected, with the reason: "consecutive_failures", "probe_failed"
	// or the reason given to Eject.
	OnEject func(key, reason string)
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Accrual wraps a balancer with failure accrual (outlier ejection): an
// endpoint that failed ConsecutiveFailures times in a row, or that the
// transport reported dead (Eject), is left out of picks for an ejection
// period that grows exponentially while it keeps failing. When the period
// ends, one pick at a time is let through as a probe: its success
// restores the endpoint, its failure ejects it again for longer. An
// ejected endpoint is still picked when nothing else is left, so a
// service whose every endpoint failed keeps trying rather than refusing
// everything.
type Accrual struct {
	next Picker
	cfg  AccrualConfig

	mu sync.Mutex
	st map[string]*accrual
}

type accrual struct {
	failures  int       // consecutive failed outcomes
	ejections int       // ejections since the last success
	until     time.Time // ejected until
	probing   bool      // a probe pick is in flight
	used      time.Time
}

// NewAccrual wraps next.
func NewAccrual(next Picker, cfg AccrualConfig) *Accrual {
	if cfg.ConsecutiveFailures <= 0 {
		cfg.ConsecutiveFailures = 5
	}
	if cfg.MinEjection <= 0 {
		cfg.MinEjection = time.Second
	}
	if cfg.MaxEjection <= 0 {
		cfg.MaxEjection = 30 * time.Second
	}
	cfg.MaxEjection = max(cfg.MaxEjection, cfg.MinEjection)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Accrual{next: next, cfg: cfg, st: make(map[string]*accrual)}
}

// Pick picks among the endpoints not ejected; if every candidate is
// ejected, among them all. An endpoint whose ejection has ended is
// picked as a probe by one pick at a time.
func (a *Accrual) Pick(eps []Endpoint, skip func(i int) bool) (int, bool) {
	now := a.cfg.Now()
	a.mu.Lock()
	out := make([]bool, len(eps))
	probe := make([]bool, len(eps))
	for i, ep := range eps {
		st := a.st[ep.Key]
		if st == nil || st.ejections == 0 {
			continue
		}
		switch {
		case now.Before(st.until), st.probing:
			out[i] = true
		default:
			probe[i] = true
		}
	}
	a.mu.Unlock()
	// A probe due goes first: left to the balancer, an endpoint whose
	// latency estimate still holds its failures would lose every
	// comparison and never be probed.
	for p := range probe {
		if !probe[p] || skip != nil && skip(p) {
			continue
		}
		if i, ok := a.next.Pick(eps, func(i int) bool { return i != p }); ok {
			a.mu.Lock()
			if st := a.st[eps[i].Key]; st != nil && st.ejections > 0 && !st.probing {
				st.probing = true
				a.mu.Unlock()
				return i, true
			}
			a.mu.Unlock()
			// Another pick took the probe meanwhile.
			a.next.Done(eps[i])
		}
		out[p] = true
	}
	i, ok := a.next.Pick(eps, func(i int) bool { return out[i] || skip != nil && skip(i) })
	if !ok {
		// Nothing healthy is left: the ejected endpoints are better than
		// no answer at all.
		return a.next.Pick(eps, skip)
	}
	return i, true
}

// Observe counts a failure or a success towards ep's accrual, then
// passes the outcome on.
func (a *Accrual) Observe(ep Endpoint, o Outcome) {
	a.next.Observe(ep, o)
	now := a.cfg.Now()
	a.mu.Lock()
	st := a.state(ep.Key, now)
	var reason string
	switch {
	case !o.Failed:
		st.failures, st.ejections, st.probing = 0, 0, false
	case st.probing:
		reason = "probe_failed"
	case st.ejections > 0 && now.Before(st.until):
		// Work picked before the ejection (or because nothing else was
		// left) failing too adds nothing: the endpoint is out already.
	default:
		st.failures++
		if st.failures >= a.cfg.ConsecutiveFailures {
			reason = "consecutive_failures"
		}
	}
	if reason != "" {
		a.ejectLocked(st, now)
	}
	a.gc(now)
	a.mu.Unlock()
	if reason != "" && a.cfg.OnEject != nil {
		a.cfg.OnEject(ep.Key, reason)
	}
}

// Done passes the end of the picked work on. A probe that ended without
// an outcome (its client went away) lets the next pick probe again.
func (a *Accrual) Done(ep Endpoint) {
	a.mu.Lock()
	if st := a.st[ep.Key]; st != nil {
		st.probing = false
	}
	a.mu.Unlock()
	a.next.Done(ep)
}

// Eject ejects the endpoint with key at once: the transport found it dead
// (a failed dial, a connection whose peer stopped answering), which no
// number of further failed requests needs to confirm. An endpoint already
// ejected keeps its current period.
func (a *Accrual) Eject(key, reason string) {
	now := a.cfg.Now()
	a.mu.Lock()
	st := a.state(key, now)
	ejected := st.ejections > 0 && now.Before(st.until) && !st.probing
	if !ejected {
		a.ejectLocked(st, now)
	}
	a.mu.Unlock()
	if !ejected && a.cfg.OnEject != nil {
		a.cfg.OnEject(key, reason)
	}
}

// Ejected reports whether the endpoint with key is ejected now.
func (a *Accrual) Ejected(key string) bool {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.st[key]
	return st != nil && st.ejections > 0 && now.Before(st.until)
}

func (a *Accrual) ejectLocked(st *accrual, now time.Time) {
	d := a.cfg.MinEjection << min(st.ejections, 20)
	st.until = now.Add(min(d, a.cfg.MaxEjection))
	st.ejections++
	st.failures = 0
	st.probing = false
}

func (a *Accrual) state(key string, now time.Time) *accrual {
	st := a.st[key]
	if st == nil {
		st = &accrual{}
		a.st[key] = st
	}
	st.used = now
	return st
}

// gc drops the state of endpoints not heard of for a while, so churn
// cannot grow the map without bound; an endpoint still ejected stays.
func (a *Accrual) gc(now time.Time) {
	if len(a.st) < 64 {
		return
	}
	for k, st := range a.st {
		if now.Sub(st.used) > time.Minute && !now.Before(st.until) {
			delete(a.st, k)
		}
	}
}
