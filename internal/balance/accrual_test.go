package balance

import (
	"slices"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                   { return &fakeClock{t: time.Unix(1000, 0)} }

// roundRobin is an inner balancer without memory of outcomes, so that
// the tests see accrual's choices alone.
type roundRobin struct{ next int }

func (r *roundRobin) Pick(eps []Endpoint, skip func(int) bool) (int, bool) {
	for k := range eps {
		i := (r.next + k) % len(eps)
		if skip == nil || !skip(i) {
			r.next = i + 1
			return i, true
		}
	}
	return 0, false
}
func (r *roundRobin) Observe(Endpoint, Outcome) {}
func (r *roundRobin) Done(Endpoint)             {}

// pickN picks n times, each pick reporting a success.
func (a *Accrual) pickN(set []Endpoint, n int) map[int]int {
	got := map[int]int{}
	for range n {
		i, ok := a.Pick(set, nil)
		if !ok {
			return nil
		}
		got[i]++
		a.Observe(set[i], Outcome{Latency: time.Millisecond})
		a.Done(set[i])
	}
	return got
}

// fail reports n failed outcomes of picks of set[i] (picked by the test,
// as work picked before an ejection would be).
func fail(a *Accrual, ep Endpoint, n int) {
	for range n {
		a.Observe(ep, Outcome{Failed: true})
	}
}

func TestAccrualEjectsAndProbes(t *testing.T) {
	type step struct {
		do   func(a *Accrual, set []Endpoint, c *fakeClock)
		want []int // the endpoints picks may go to (picks also report success)
	}
	ejectB := func(a *Accrual, set []Endpoint, _ *fakeClock) { fail(a, set[1], 3) }
	wait := func(d time.Duration) func(a *Accrual, set []Endpoint, c *fakeClock) {
		return func(_ *Accrual, _ []Endpoint, c *fakeClock) { c.advance(d) }
	}
	tests := []struct {
		name  string
		n     int
		steps []step
		// ejects are the OnEject reasons, in order.
		ejects []string
	}{
		{"fewer failures than the threshold eject nothing", 2, []step{
			{func(a *Accrual, set []Endpoint, _ *fakeClock) { fail(a, set[1], 2) }, []int{0, 1}},
		}, nil},
		{"a success resets the count", 2, []step{
			{func(a *Accrual, set []Endpoint, _ *fakeClock) {
				fail(a, set[1], 2)
				a.Observe(set[1], Outcome{})
				fail(a, set[1], 2)
			}, []int{0, 1}},
		}, nil},
		{"consecutive failures eject until the period ends", 2, []step{
			{ejectB, []int{0}},
			{wait(999 * time.Millisecond), []int{0}},
			// The period ended: the probe succeeds (pickN reports success)
			// and the endpoint is back.
			{wait(time.Millisecond), []int{0, 1}},
		}, []string{"consecutive_failures"}},
		{"a failed probe doubles the period", 2, []step{
			{ejectB, []int{0}},
			{func(a *Accrual, set []Endpoint, c *fakeClock) {
				c.advance(time.Second)
				// Pick until the probe goes to b, and fail it.
				for {
					i, _ := a.Pick(set, nil)
					if i == 1 {
						a.Observe(set[1], Outcome{Failed: true})
						a.Done(set[1])
						return
					}
					a.Observe(set[i], Outcome{})
					a.Done(set[i])
				}
			}, []int{0}},
			{wait(1999 * time.Millisecond), []int{0}},
			{wait(time.Millisecond), []int{0, 1}},
		}, []string{"consecutive_failures", "probe_failed"}},
		{"the transport ejects at once", 2, []step{
			{func(a *Accrual, set []Endpoint, _ *fakeClock) { a.Eject(set[1].Key, "unresponsive") }, []int{0}},
			// Ejecting an ejected endpoint again does not lengthen it.
			{func(a *Accrual, set []Endpoint, c *fakeClock) {
				c.advance(500 * time.Millisecond)
				a.Eject(set[1].Key, "unresponsive")
				c.advance(500 * time.Millisecond)
			}, []int{0, 1}},
		}, []string{"unresponsive"}},
		// The first pick (round robin: a) succeeds, which restores a.
		{"everything ejected: picked anyway, and a success restores", 2, []step{
			{func(a *Accrual, set []Endpoint, _ *fakeClock) {
				a.Eject(set[0].Key, "x")
				a.Eject(set[1].Key, "x")
			}, []int{0}},
		}, []string{"x", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			var ejects []string
			a := NewAccrual(&roundRobin{}, AccrualConfig{ConsecutiveFailures: 3, MinEjection: time.Second, MaxEjection: 10 * time.Second, Now: c.now,
				OnEject: func(_, reason string) { ejects = append(ejects, reason) }})
			set := eps(tt.n)
			for si, s := range tt.steps {
				s.do(a, set, c)
				got := a.pickN(set, 200)
				for i := range tt.n {
					if got[i] > 0 != slices.Contains(s.want, i) {
						t.Fatalf("step %d: picks %v, want them on %v only (each at least once)", si, got, s.want)
					}
				}
			}
			if !slices.Equal(ejects, tt.ejects) {
				t.Fatalf("ejections %q, want %q", ejects, tt.ejects)
			}
		})
	}
}

// While a probe is in flight, other picks leave the endpoint out; a probe
// that ends without an outcome lets the next pick probe.
func TestAccrualOneProbeAtATime(t *testing.T) {
	c := newClock()
	a := NewAccrual(&roundRobin{}, AccrualConfig{ConsecutiveFailures: 1, MinEjection: time.Second, Now: c.now})
	set := eps(2)
	a.Eject(set[1].Key, "x")
	c.advance(time.Second)
	var probe int
	for {
		i, _ := a.Pick(set, nil)
		if i == 1 {
			break
		}
		a.Done(set[i])
		if probe++; probe > 1000 {
			t.Fatal("no probe of the ejected endpoint")
		}
	}
	for range 100 {
		if i, _ := a.Pick(set, nil); i == 1 {
			t.Fatal("a second pick went to the endpoint under probe")
		} else {
			a.Done(set[i])
		}
	}
	if !a.Ejected(set[1].Key) == false {
		t.Fatal("Ejected during the probe: the period has ended")
	}
	a.Done(set[1]) // the probe's client went away: no outcome
	got := a.pickN(set, 200)
	if got[1] == 0 {
		t.Fatalf("picks %v: the next probe never came", got)
	}
}

func TestAccrualMaxEjection(t *testing.T) {
	c := newClock()
	a := NewAccrual(&roundRobin{}, AccrualConfig{ConsecutiveFailures: 1, MinEjection: time.Second, MaxEjection: 3 * time.Second, Now: c.now})
	set := eps(2)
	for range 10 {
		a.Eject(set[1].Key, "x")
		c.advance(3 * time.Second)
		if a.Ejected(set[1].Key) {
			t.Fatal("ejected longer than MaxEjection")
		}
	}
}
