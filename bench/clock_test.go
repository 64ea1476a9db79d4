package bench

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeClock is simulated time: SleepUntil jumps straight to the wake-up
// time and a fake target's work advances the clock. With one worker a run
// is deterministic and takes no real time.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	late time.Duration // every SleepUntil wakes this much after its time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	if t.After(c.now) {
		c.now = t.Add(c.late)
	}
	c.mu.Unlock()
	return nil
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fakeTarget serves requests by advancing the fake clock: every request
// takes service, except request number stallAt (counting from 0 over the
// whole run) which takes stall.
type fakeTarget struct {
	clock   *fakeClock
	service time.Duration
	stallAt int
	stall   time.Duration
	fail    func(n int) error

	mu    sync.Mutex
	n     int
	times []time.Time // when each request was sent
}

func (t *fakeTarget) requester(int) requester { return t }
func (t *fakeTarget) close()                  {}

func (t *fakeTarget) do(ctx context.Context) (int64, error) {
	t.mu.Lock()
	n := t.n
	t.n++
	t.times = append(t.times, t.clock.Now())
	t.mu.Unlock()
	d := t.service
	if n == t.stallAt {
		d = t.stall
	}
	t.clock.Advance(d)
	if t.fail != nil {
		if err := t.fail(n); err != nil {
			return 0, err
		}
	}
	return 10, nil
}

func fakeRun(t *testing.T, cfg Config, ft *fakeTarget) *Result {
	t.Helper()
	cfg.Proto, cfg.Target, cfg.Clock = ProtoTCP, "fake:1", ft.clock
	if err := cfg.normalize(); err != nil {
		t.Fatal(err)
	}
	r, err := runTarget(context.Background(), cfg, ft)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestScheduleExact(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := Schedule{Start: start, Rate: 10_000}
	if got, want := s.At(99_999), start.Add(10*time.Second-100*time.Microsecond); !got.Equal(want) {
		t.Fatalf("At(99999) = %v, want %v", got, want)
	}
	if got := s.At(100_000); !got.Equal(start.Add(10 * time.Second)) {
		t.Fatalf("At(100000) = %v", got)
	}
	// No drift however far out: a day at 10k/s.
	if got := s.At(864_000_000); !got.Equal(start.Add(24 * time.Hour)) {
		t.Fatalf("At(one day) = %v", got)
	}
	// A rate that does not divide a second: offsets are floor(i·1e9/rate)
	// and come back to whole seconds exactly.
	s3 := Schedule{Start: start, Rate: 3}
	for i, want := range []time.Duration{0, 333_333_333, 666_666_666, time.Second, 1_333_333_333} {
		if got := s3.Offset(int64(i)); got != want {
			t.Errorf("rate 3: Offset(%d) = %d, want %d", i, got, want)
		}
	}
	// Fractional rates.
	if got := (Schedule{Rate: 2.5}).Offset(5); got != 2*time.Second {
		t.Errorf("rate 2.5: Offset(5) = %v", got)
	}
	if got := (Schedule{Rate: 0.5}).Offset(3); got != 6*time.Second {
		t.Errorf("rate 0.5: Offset(3) = %v", got)
	}
	for _, d := range []time.Duration{0, 1, 99 * time.Microsecond, 100 * time.Microsecond, 10 * time.Second, 10*time.Second + 1} {
		i := s.Index(d)
		if (i > 0 && s.Offset(i-1) >= d) || s.Offset(i) < d {
			t.Errorf("Index(%v) = %d", d, i)
		}
	}
	if s.Index(10*time.Second) != 100_000 || s3.Index(time.Second) != 3 {
		t.Errorf("Index: %d, %d", s.Index(10*time.Second), s3.Index(time.Second))
	}
}

// TestPacingNoDrift runs the open-loop engine on a fake clock at 10,000
// req/s for 10 s: exactly 100,000 requests, sent exactly 100µs apart, the
// last at start+10s−100µs.
func TestPacingNoDrift(t *testing.T) {
	clk := newFakeClock()
	start := clk.Now()
	ft := &fakeTarget{clock: clk, stallAt: -1}
	r := fakeRun(t, Config{Rate: 10_000, Duration: 10 * time.Second, Concurrency: 1}, ft)
	if len(ft.times) != 100_000 {
		t.Fatalf("%d requests sent, want 100000", len(ft.times))
	}
	if !ft.times[0].Equal(start) {
		t.Errorf("first at %v, want start", ft.times[0].Sub(start))
	}
	if last := ft.times[99_999]; !last.Equal(start.Add(10*time.Second - 100*time.Microsecond)) {
		t.Errorf("100,000th request at start+%v, want start+9.9999s", last.Sub(start))
	}
	for i := 1; i < len(ft.times); i++ {
		if d := ft.times[i].Sub(ft.times[i-1]); d != 100*time.Microsecond {
			t.Fatalf("gap %d→%d is %v, want 100µs", i-1, i, d)
		}
	}
	if r.Requests != 100_000 || r.Unsent != 0 || r.RPS != 10_000 || r.DurationS != 10 {
		t.Errorf("requests %d unsent %d rps %v duration %v", r.Requests, r.Unsent, r.RPS, r.DurationS)
	}
	if r.Model != "open" || r.Pacing != "uniform" {
		t.Errorf("model %q pacing %q", r.Model, r.Pacing)
	}
}

// TestWarmupExcluded checks the warmup's requests are sent but not counted.
func TestWarmupExcluded(t *testing.T) {
	clk := newFakeClock()
	ft := &fakeTarget{clock: clk, stallAt: 5, stall: 3 * time.Second, service: 10 * time.Microsecond}
	r := fakeRun(t, Config{Rate: 1000, Warmup: 4 * time.Second, Duration: 2 * time.Second, Concurrency: 1}, ft)
	// The 3 s stall happens in the warmup and its backlog drains there too.
	if len(ft.times) != 6000 || r.Requests != 2000 {
		t.Fatalf("sent %d, counted %d", len(ft.times), r.Requests)
	}
	if r.LatencyUS.Max > 1000 {
		t.Errorf("warmup stall leaked into the stats: max %dµs", r.LatencyUS.Max)
	}
}

// TestCoordinatedOmission: the target stalls for 1 s once. In the open
// loop the requests scheduled during the stall wait for it and their
// latency says so; in the closed loop the stall is a single slow request.
func TestCoordinatedOmission(t *testing.T) {
	const service = 100 * time.Microsecond
	clk := newFakeClock()
	open := fakeRun(t, Config{Rate: 1000, Duration: 10 * time.Second, Concurrency: 1},
		&fakeTarget{clock: clk, service: service, stallAt: 2000, stall: time.Second})
	clk = newFakeClock()
	closed := fakeRun(t, Config{Duration: 10 * time.Second, Concurrency: 1},
		&fakeTarget{clock: clk, service: service, stallAt: 2000, stall: time.Second})

	t.Logf("open:   %d req, %+v", open.Requests, open.LatencyUS)
	t.Logf("closed: %d req, %+v", closed.Requests, closed.LatencyUS)
	if open.Requests != 10_000 {
		t.Errorf("open loop: %d requests, want 10000", open.Requests)
	}
	// About 1,100 of the 10,000 slots are scheduled during the stall or
	// while its backlog drains, with waits from 1 s down to 0: the p99 is
	// close to 900ms.
	if p99 := open.LatencyUS.P99; p99 < 850_000 || p99 > 1_000_000 {
		t.Errorf("open loop p99 = %dµs, want ≈ 900ms (the stall's wait)", p99)
	}
	if p90 := open.LatencyUS.P90; p90 < 50_000 {
		t.Errorf("open loop p90 = %dµs, want the stall visible", p90)
	}
	if p50 := open.LatencyUS.P50; p50 != 100 {
		t.Errorf("open loop p50 = %dµs, want 100", p50)
	}
	// The closed loop hides the stall: one slow request out of ~90,000.
	if p := closed.LatencyUS.P999; p != 100 {
		t.Errorf("closed loop p99.9 = %dµs, want 100", p)
	}
	if closed.LatencyUS.P99 != 100 {
		t.Errorf("closed loop p99 = %dµs, want 100", closed.LatencyUS.P99)
	}
	for name, r := range map[string]*Result{"open": open, "closed": closed} {
		if m := r.LatencyUS.Max; m < 1_000_000 || m > 1_000_200 {
			t.Errorf("%s loop max = %dµs, want the 1 s stall", name, m)
		}
	}
	if closed.Requests < 89_000 || closed.Requests > 90_100 {
		t.Errorf("closed loop: %d requests", closed.Requests)
	}
}

// TestOpenLoopChargesGeneratorLateness: a generator whose timers wake
// 300µs late still times every request from its intended send time, and
// reports its own lateness apart in send_lag_us.
func TestOpenLoopChargesGeneratorLateness(t *testing.T) {
	clk := newFakeClock()
	clk.late = 300 * time.Microsecond
	r := fakeRun(t, Config{Rate: 1000, Duration: time.Second, Concurrency: 1},
		&fakeTarget{clock: clk, service: 100 * time.Microsecond, stallAt: -1})
	if r.SendLagUS == nil {
		t.Fatal("open loop result has no send_lag_us")
	}
	if p50 := r.SendLagUS.P50; p50 < 295 || p50 > 305 {
		t.Errorf("send lag p50 = %dµs, want 300", p50)
	}
	if p50 := r.LatencyUS.P50; p50 < 395 || p50 > 405 {
		t.Errorf("latency p50 = %dµs, want 400 (service 100 + lateness 300)", p50)
	}
	closed := fakeRun(t, Config{Duration: time.Second, Concurrency: 1},
		&fakeTarget{clock: newFakeClock(), service: 100 * time.Microsecond, stallAt: -1})
	if closed.SendLagUS != nil {
		t.Error("closed loop reports send_lag_us")
	}
}

// TestOpenLoopBacklogUnsent: a target that cannot keep up leaves slots
// unsent at the end, and they are reported.
func TestOpenLoopBacklogUnsent(t *testing.T) {
	clk := newFakeClock()
	r := fakeRun(t, Config{Rate: 1000, Duration: time.Second, Concurrency: 1},
		&fakeTarget{clock: clk, service: 2 * time.Millisecond, stallAt: -1})
	if r.Requests != 500 || r.Unsent != 500 {
		t.Errorf("requests %d unsent %d, want 500 and 500", r.Requests, r.Unsent)
	}
	// The last request sent was scheduled at 499ms and sent at 998ms.
	if r.LatencyUS.Max < 500_000 {
		t.Errorf("max %dµs: the backlog's wait is missing", r.LatencyUS.Max)
	}
}

func TestErrorsCountedByKind(t *testing.T) {
	clk := newFakeClock()
	ft := &fakeTarget{clock: clk, service: time.Millisecond, stallAt: -1, fail: func(n int) error {
		switch n % 10 {
		case 1:
			return httpStatusError{503}
		case 2:
			return httpStatusError{404}
		case 3:
			return errors.New("boom")
		}
		return nil
	}}
	r := fakeRun(t, Config{Rate: 100, Duration: time.Second, Concurrency: 1}, ft)
	want := map[string]int64{"http_5xx": 10, "http_4xx": 10, "other": 10}
	if r.Requests != 100 || r.ErrorTotal != 30 || len(r.Errors) != 3 {
		t.Fatalf("requests %d errors %v", r.Requests, r.Errors)
	}
	for k, v := range want {
		if r.Errors[k] != v {
			t.Errorf("errors[%s] = %d, want %d", k, r.Errors[k], v)
		}
	}
	if r.BytesPerSecond != 700 { // 70 successes × 10 bytes over 1 s
		t.Errorf("bytes_per_second = %v", r.BytesPerSecond)
	}
}

func TestRunInterrupted(t *testing.T) {
	srvStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	ft := &fakeTarget{clock: nil, stallAt: -1}
	cfg := Config{Proto: ProtoTCP, Target: "fake:1", Rate: 100, Duration: time.Hour, Concurrency: 2}
	if err := cfg.normalize(); err != nil {
		t.Fatal(err)
	}
	ft.clock = newFakeClock() // separate clock for the target; the run uses the real one
	r, err := runTarget(ctx, cfg, ft)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(srvStart); el > 5*time.Second {
		t.Fatalf("interrupted run took %v", el)
	}
	// About 30 slots in 0.3 s; fewer if this process was starved.
	if r.DurationS < 0.2 || r.DurationS > 2 || r.Requests < 1 || r.Requests > int64(r.DurationS*100)+2 {
		t.Errorf("duration %v requests %d", r.DurationS, r.Requests)
	}
}
