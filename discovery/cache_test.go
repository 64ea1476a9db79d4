package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

const testID = "spiffe://demo.local/ns/default/sa/echo"

func ep(addr string) Endpoint { return Endpoint{Addr: addr, Identity: testID, Weight: 1} }

func eps(addrs ...string) []Endpoint {
	var out []Endpoint
	for _, a := range addrs {
		out = append(out, ep(a))
	}
	return out
}

func addrsOf(e []Endpoint) []string {
	out := []string{}
	for _, x := range e {
		out = append(out, x.Addr)
	}
	return out
}

// fakeResolver hands out fakeWatches the test drives by hand.
type fakeResolver struct {
	mu      sync.Mutex
	known   map[string]bool
	failErr error // if set, Resolve fails with it for known names
	calls   map[string]int
	watches map[string][]*fakeWatch
	created chan *fakeWatch
}

func newFake(known ...string) *fakeResolver {
	f := &fakeResolver{
		known:   make(map[string]bool),
		calls:   make(map[string]int),
		watches: make(map[string][]*fakeWatch),
		created: make(chan *fakeWatch, 100),
	}
	for _, n := range known {
		f.known[n] = true
	}
	return f
}

func (f *fakeResolver) Resolve(ctx context.Context, name string) (Watch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[name]++
	if !f.known[name] {
		return nil, fmt.Errorf("fake: %q: %w", name, ErrUnknownService)
	}
	if f.failErr != nil {
		return nil, f.failErr
	}
	w := &fakeWatch{name: name, ch: make(chan fakeEvent, 100), done: make(chan struct{})}
	f.watches[name] = append(f.watches[name], w)
	f.created <- w
	return w, nil
}

func (f *fakeResolver) setKnown(name string, known bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.known[name] = known
}

func (f *fakeResolver) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failErr = err
}

func (f *fakeResolver) callCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

func (f *fakeResolver) openWatches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, ws := range f.watches {
		for _, w := range ws {
			if !w.isClosed() {
				n++
			}
		}
	}
	return n
}

// nextWatch waits for the next watch the fake hands out.
func (f *fakeResolver) nextWatch(t *testing.T) *fakeWatch {
	t.Helper()
	select {
	case w := <-f.created:
		return w
	case <-time.After(2 * time.Second):
		t.Fatal("no watch was started")
		return nil
	}
}

type fakeEvent struct {
	u   Update
	err error
}

type fakeWatch struct {
	name      string
	ch        chan fakeEvent
	done      chan struct{}
	closeOnce sync.Once
}

func (w *fakeWatch) Next(ctx context.Context) (Update, error) {
	select {
	case ev := <-w.ch:
		return ev.u, ev.err
	case <-w.done:
		return Update{}, ErrClosed
	case <-ctx.Done():
		return Update{}, ctx.Err()
	}
}

func (w *fakeWatch) Close() error {
	w.closeOnce.Do(func() { close(w.done) })
	return nil
}

func (w *fakeWatch) isClosed() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

func (w *fakeWatch) send(kind UpdateKind, e ...Endpoint) {
	w.ch <- fakeEvent{u: Update{Kind: kind, Endpoints: e}}
}
func (w *fakeWatch) fail(err error) { w.ch <- fakeEvent{err: err} }

// fakeClock is real time plus an offset the test advances, so rate limits
// can be tested without depending on scheduling.
type fakeClock struct{ offset atomic.Int64 }

func (f *fakeClock) now() time.Time          { return time.Now().Add(time.Duration(f.offset.Load())) }
func (f *fakeClock) advance(d time.Duration) { f.offset.Add(int64(d)) }

func newTestCache(t *testing.T, r Resolver) *Cache {
	t.Helper()
	c := NewCache(r, slog.New(slog.DiscardHandler))
	c.retryInterval = 50 * time.Millisecond
	c.minBackoff = time.Millisecond
	c.maxBackoff = 5 * time.Millisecond
	t.Cleanup(func() { c.Close() })
	return c
}

func get(t *testing.T, c *Cache, name string) ([]Endpoint, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Endpoints(ctx, name)
}

func mustGet(t *testing.T, c *Cache, name string, want ...string) []Endpoint {
	t.Helper()
	got, err := get(t, c, name)
	if err != nil {
		t.Fatalf("Endpoints(%q): %v", name, err)
	}
	if want == nil {
		want = []string{}
	}
	if !reflect.DeepEqual(addrsOf(got), want) {
		t.Fatalf("Endpoints(%q) = %v, want %v", name, addrsOf(got), want)
	}
	return got
}

// eventuallyGet polls Endpoints until it returns want.
func eventuallyGet(t *testing.T, c *Cache, name string, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	var got []Endpoint
	var err error
	testkit.Eventually(t, fmt.Sprintf("Endpoints(%q) = %v", name, want), func() bool {
		got, err = get(t, c, name)
		return err == nil && reflect.DeepEqual(addrsOf(got), want)
	})
}

func TestCacheMissThenHit(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)

	res := make(chan []Endpoint, 1)
	go func() {
		e, _ := get(t, c, "echo")
		res <- e
	}()
	w := f.nextWatch(t)
	w.send(Reset, eps("a:1", "b:2")...)
	first := <-res
	if !reflect.DeepEqual(addrsOf(first), []string{"a:1", "b:2"}) {
		t.Fatalf("first = %v", addrsOf(first))
	}
	second := mustGet(t, c, "echo", "a:1", "b:2")
	if &first[0] != &second[0] {
		t.Error("hit returned a different slice; want the shared snapshot")
	}
	if n := f.callCount("echo"); n != 1 {
		t.Errorf("Resolve called %d times, want 1", n)
	}
}

func TestCacheSharesOneWatch(t *testing.T) {
	f := newFake("echo", "web")
	c := newTestCache(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		name := []string{"echo", "web"}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := get(t, c, name)
			if err == nil && len(got) != 1 {
				err = fmt.Errorf("%s: got %v", name, addrsOf(got))
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	for range 2 {
		w := f.nextWatch(t)
		w.send(Reset, ep(w.name+":1"))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a, b := f.callCount("echo"), f.callCount("web"); a != 1 || b != 1 {
		t.Errorf("Resolve calls: echo %d, web %d; want 1 each", a, b)
	}
}

func TestCacheAppliesUpdates(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	go get(t, c, "echo")
	w := f.nextWatch(t)
	w.send(Reset, eps("a:1", "b:2")...)
	before := mustGet(t, c, "echo", "a:1", "b:2")

	w.send(Add, Endpoint{Addr: "b:2", Identity: testID, Weight: 5}, ep("c:3"))
	eventuallyGet(t, c, "echo", "a:1", "b:2", "c:3")
	got := mustGet(t, c, "echo", "a:1", "b:2", "c:3")
	if got[1].Weight != 5 {
		t.Errorf("Add did not replace b:2: %+v", got[1])
	}
	// Copy-on-write: the earlier snapshot is untouched.
	if !reflect.DeepEqual(before, eps("a:1", "b:2")) {
		t.Errorf("earlier snapshot changed to %+v", before)
	}

	w.send(Remove, ep("a:1"), ep("zz:9"))
	eventuallyGet(t, c, "echo", "b:2", "c:3")

	w.send(Reset, eps("d:4")...)
	eventuallyGet(t, c, "echo", "d:4")

	// An unknown kind is ignored.
	w.send(UpdateKind(42), ep("e:5"))
	w.send(Add, ep("f:6"))
	eventuallyGet(t, c, "echo", "d:4", "f:6")
}

func TestCacheNoEndpoints(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	go get(t, c, "echo")
	w := f.nextWatch(t)
	w.send(Reset)
	testkit.Eventually(t, "ErrNoEndpoints", func() bool {
		_, err := get(t, c, "echo")
		return errors.Is(err, ErrNoEndpoints)
	})
	got, err := get(t, c, "echo")
	if got != nil || !errors.Is(err, ErrNoEndpoints) || !strings.Contains(err.Error(), `"echo"`) {
		t.Fatalf("Endpoints = %v, %v; want ErrNoEndpoints naming the service", got, err)
	}

	// Removing the last endpoint also gives ErrNoEndpoints; adding one fixes it.
	w.send(Add, ep("a:1"))
	eventuallyGet(t, c, "echo", "a:1")
	w.send(Remove, ep("a:1"))
	testkit.Eventually(t, "ErrNoEndpoints after Remove", func() bool {
		_, err := get(t, c, "echo")
		return errors.Is(err, ErrNoEndpoints)
	})
	if n := f.callCount("echo"); n != 1 {
		t.Errorf("Resolve called %d times, want 1 (an empty set is not a failure)", n)
	}
}

func TestCacheUnknownServiceRetry(t *testing.T) {
	f := newFake()
	c := newTestCache(t, f)
	clock := &fakeClock{}
	c.now = clock.now
	c.retryInterval = time.Hour

	_, err := get(t, c, "echo")
	if !errors.Is(err, ErrUnknownService) || !strings.Contains(err.Error(), `"echo"`) {
		t.Fatalf("Endpoints = %v, want ErrUnknownService naming the service", err)
	}
	// Calls within the retry interval get the last error without resolving.
	for range 20 {
		if _, err2 := get(t, c, "echo"); !errors.Is(err2, ErrUnknownService) {
			t.Fatalf("Endpoints = %v, want ErrUnknownService", err2)
		}
	}
	clock.advance(59 * time.Minute)
	if _, err2 := get(t, c, "echo"); !errors.Is(err2, ErrUnknownService) {
		t.Fatalf("Endpoints = %v, want ErrUnknownService", err2)
	}
	if n := f.callCount("echo"); n != 1 {
		t.Fatalf("Resolve called %d times within the retry interval, want 1", n)
	}

	// After the interval the next call resolves again.
	clock.advance(time.Minute)
	if _, err := get(t, c, "echo"); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("Endpoints = %v", err)
	}
	if n := f.callCount("echo"); n != 2 {
		t.Fatalf("Resolve called %d times, want 2", n)
	}

	// Once the service exists, a retry finds it.
	f.setKnown("echo", true)
	clock.advance(time.Hour)
	res := make(chan error, 1)
	go func() {
		_, err := get(t, c, "echo")
		res <- err
	}()
	f.nextWatch(t).send(Reset, ep("a:1"))
	if err := <-res; err != nil {
		t.Fatalf("Endpoints after the service appeared: %v", err)
	}
	mustGet(t, c, "echo", "a:1")
}

func TestCacheDefaultRetryInterval(t *testing.T) {
	c := NewCache(newFake(), nil)
	defer c.Close()
	if c.retryInterval != time.Second || DefaultRetryInterval != time.Second {
		t.Fatalf("retry interval = %v", c.retryInterval)
	}
	if c.logger == nil {
		t.Fatal("nil logger not defaulted")
	}
}

func TestCacheWaitBoundedByContext(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := c.Endpoints(ctx, "echo")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"echo"`) {
		t.Fatalf("Endpoints = %v, want DeadlineExceeded naming the service", err)
	}
	// The watch keeps going; a later call gets the data.
	f.nextWatch(t).send(Reset, ep("a:1"))
	mustGet(t, c, "echo", "a:1")
	if n := f.callCount("echo"); n != 1 {
		t.Errorf("Resolve called %d times, want 1", n)
	}
}

func TestCacheWatchErrorReResolves(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	go get(t, c, "echo")
	w1 := f.nextWatch(t)
	w1.send(Reset, ep("a:1"))
	eventuallyGet(t, c, "echo", "a:1")

	// Make re-resolving fail for a while: the last set is still served.
	f.setFail(errors.New("control plane down"))
	w1.fail(errors.New("stream broken"))
	testkit.Eventually(t, "re-resolve attempts", func() bool { return f.callCount("echo") >= 3 })
	mustGet(t, c, "echo", "a:1")
	if !w1.isClosed() {
		t.Error("failed watch was not closed")
	}

	f.setFail(nil)
	w2 := f.nextWatch(t)
	w2.send(Reset, ep("b:2"))
	eventuallyGet(t, c, "echo", "b:2")
}

func TestCacheWatchErrorBeforeFirstUpdate(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	c.minBackoff, c.maxBackoff = 50*time.Millisecond, 50*time.Millisecond
	res := make(chan error, 1)
	go func() {
		_, err := get(t, c, "echo")
		res <- err
	}()
	f.nextWatch(t).fail(errors.New("stream broken"))
	// The waiting caller gets the failure instead of hanging until its deadline.
	select {
	case err := <-res:
		if err == nil || !strings.Contains(err.Error(), "stream broken") {
			t.Fatalf("Endpoints = %v, want the watch error", err)
		}
	case <-time.After(time.Second):
		t.Fatal("caller still waiting after the watch failed")
	}
	// The cache re-resolves by itself.
	f.nextWatch(t).send(Reset, ep("a:1"))
	eventuallyGet(t, c, "echo", "a:1")
}

func TestCacheServiceDisappearsOnReResolve(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	go get(t, c, "echo")
	w := f.nextWatch(t)
	w.send(Reset, ep("a:1"))
	eventuallyGet(t, c, "echo", "a:1")

	f.setKnown("echo", false)
	w.fail(errors.New("stream broken"))
	testkit.Eventually(t, "ErrUnknownService", func() bool {
		_, err := get(t, c, "echo")
		return errors.Is(err, ErrUnknownService)
	})
}

func TestCacheWatchClosedByResolver(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	clock := &fakeClock{}
	c.now = clock.now
	c.retryInterval = time.Hour
	go get(t, c, "echo")
	w1 := f.nextWatch(t)
	w1.send(Reset, ep("a:1"))
	eventuallyGet(t, c, "echo", "a:1")

	w1.Close() // as a resolver shutting down would
	testkit.Eventually(t, "watch goroutine to stop", func() bool {
		e := (*c.entries.Load())["echo"]
		e.mu.Lock()
		defer e.mu.Unlock()
		return !e.running
	})
	// Within the retry interval the last set is served without resolving.
	mustGet(t, c, "echo", "a:1")
	if n := f.callCount("echo"); n != 1 {
		t.Fatalf("Resolve called %d times, want 1", n)
	}
	// After it, the next call resolves again and waits for the new watch.
	clock.advance(time.Hour)
	res := make(chan []Endpoint, 1)
	go func() {
		e, _ := get(t, c, "echo")
		res <- e
	}()
	f.nextWatch(t).send(Reset, ep("b:2"))
	if got := <-res; !reflect.DeepEqual(addrsOf(got), []string{"b:2"}) {
		t.Fatalf("Endpoints = %v, want [b:2]", addrsOf(got))
	}
}

func TestCacheClose(t *testing.T) {
	base := testkit.TakeBaseline()
	f := newFake("echo", "web", "idle")
	c := NewCache(f, slog.New(slog.DiscardHandler))
	c.retryInterval, c.minBackoff, c.maxBackoff = time.Millisecond, time.Millisecond, time.Millisecond

	for _, name := range []string{"echo", "web"} {
		go get(t, c, name)
		f.nextWatch(t).send(Reset, ep(name+":1"))
		eventuallyGet(t, c, name, name+":1")
	}
	// One watch never delivers, one name is unknown, one is backing off.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	c.Endpoints(ctx, "idle")
	cancel()
	f.nextWatch(t)
	get(t, c, "nope")
	f.setKnown("flaky", true)
	go get(t, c, "flaky")
	f.nextWatch(t).fail(errors.New("broken"))

	// A caller blocked waiting for a first update that never comes.
	f.setKnown("slow", true)
	waiter := make(chan error, 1)
	go func() {
		_, err := c.Endpoints(context.Background(), "slow")
		waiter <- err
	}()
	testkit.Eventually(t, "the slow watch", func() bool { return f.callCount("slow") == 1 })

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if n := f.openWatches(); n != 0 {
		t.Errorf("%d watches still open after Close", n)
	}
	for _, name := range []string{"echo", "nope", "other"} {
		if _, err := c.Endpoints(context.Background(), name); !errors.Is(err, ErrClosed) {
			t.Errorf("Endpoints(%q) after Close = %v, want ErrClosed", name, err)
		}
	}
	select {
	case err := <-waiter:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("waiting Endpoints = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("waiting Endpoints did not return after Close")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	base.Check(t)
}

func TestApplyUpdate(t *testing.T) {
	w5 := Endpoint{Addr: "b:2", Identity: testID, Weight: 5}
	other := Endpoint{Addr: "a:1", Identity: "spiffe://demo.local/other"}
	tests := []struct {
		name string
		cur  []Endpoint
		u    Update
		want []Endpoint
		ok   bool
	}{
		{"reset empty", eps("a:1"), Update{Kind: Reset}, nil, true},
		{"reset", eps("a:1"), Update{Kind: Reset, Endpoints: eps("b:2", "c:3")}, eps("b:2", "c:3"), true},
		{"add new", eps("a:1"), Update{Kind: Add, Endpoints: eps("b:2")}, eps("a:1", "b:2"), true},
		{"add replaces by key", eps("a:1", "b:2"), Update{Kind: Add, Endpoints: []Endpoint{w5}}, []Endpoint{ep("a:1"), w5}, true},
		{"add same addr other identity", eps("a:1"), Update{Kind: Add, Endpoints: []Endpoint{other}}, []Endpoint{ep("a:1"), other}, true},
		{"add duplicate within update", nil, Update{Kind: Add, Endpoints: []Endpoint{ep("b:2"), w5}}, []Endpoint{w5}, true},
		{"add to empty", nil, Update{Kind: Add, Endpoints: eps("a:1")}, eps("a:1"), true},
		{"remove", eps("a:1", "b:2", "c:3"), Update{Kind: Remove, Endpoints: eps("b:2")}, eps("a:1", "c:3"), true},
		{"remove by key ignores weight", eps("a:1", "b:2"), Update{Kind: Remove, Endpoints: []Endpoint{w5}}, eps("a:1"), true},
		{"remove other identity keeps", eps("a:1"), Update{Kind: Remove, Endpoints: []Endpoint{other}}, eps("a:1"), true},
		{"remove missing", eps("a:1"), Update{Kind: Remove, Endpoints: eps("z:9")}, eps("a:1"), true},
		{"remove all", eps("a:1"), Update{Kind: Remove, Endpoints: eps("a:1")}, []Endpoint{}, true},
		{"unknown kind", eps("a:1"), Update{Kind: 9, Endpoints: eps("b:2")}, eps("a:1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := append([]Endpoint(nil), tt.cur...)
			got, ok := applyUpdate(tt.cur, tt.u)
			if ok != tt.ok || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("applyUpdate = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
			if !reflect.DeepEqual(tt.cur, orig) {
				t.Fatalf("applyUpdate modified its input: %+v", tt.cur)
			}
		})
	}
}

func BenchmarkCacheHit(b *testing.B) {
	f := newFake("echo")
	c := NewCache(f, slog.New(slog.DiscardHandler))
	defer c.Close()
	go c.Endpoints(context.Background(), "echo")
	(<-f.created).send(Reset, eps("a:1", "b:2")...)
	ctx := context.Background()
	for {
		if _, err := c.Endpoints(ctx, "echo"); err == nil {
			break
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Endpoints(ctx, "echo"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func notReady(addr string) Endpoint {
	e := ep(addr)
	e.NotReady = true
	return e
}

// TestCacheServesReadyOnly: not-ready endpoints are kept in the set (so
// later updates still match them) but never returned.
func TestCacheServesReadyOnly(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	res := make(chan []Endpoint, 1)
	go func() {
		e, _ := get(t, c, "echo")
		res <- e
	}()
	w := f.nextWatch(t)
	w.send(Reset, ep("a:1"), notReady("b:2"), ep("c:3"))
	if got := addrsOf(<-res); !reflect.DeepEqual(got, []string{"a:1", "c:3"}) {
		t.Fatalf("first = %v, want the ready a:1 c:3", got)
	}

	steps := []struct {
		name    string
		kind    UpdateKind
		eps     []Endpoint
		want    []string
		errWant string // when no endpoint is ready
	}{
		{"b becomes ready in place", Add, []Endpoint{ep("b:2")}, []string{"a:1", "b:2", "c:3"}, ""},
		{"a and c stop being ready", Add, []Endpoint{notReady("a:1"), notReady("c:3")}, []string{"b:2"}, ""},
		{"none ready", Add, []Endpoint{notReady("b:2")}, nil, `service "echo": none of its 3 endpoints is ready`},
		{"a not-ready endpoint can be removed", Remove, []Endpoint{ep("a:1")}, nil, "none of its 2 endpoints is ready"},
		{"c ready again", Add, []Endpoint{ep("c:3")}, []string{"c:3"}, ""},
	}
	for _, s := range steps {
		w.send(s.kind, s.eps...)
		if s.errWant == "" {
			eventuallyGet(t, c, "echo", s.want...)
			continue
		}
		testkit.Eventually(t, s.name, func() bool {
			_, err := get(t, c, "echo")
			return errors.Is(err, ErrNoEndpoints) && strings.Contains(err.Error(), s.errWant)
		})
	}
}

func remote(addr, name string) Endpoint {
	e := ep(addr)
	e.ServerName = name
	return e
}

// TestCacheFederatedFailover: a service with local endpoints and
// endpoints of another cluster (through its gateway) serves the local
// ones while one is ready, the remote ones when none is, and the local
// ones again when they return.
func TestCacheFederatedFailover(t *testing.T) {
	f := newFake("echo")
	c := newTestCache(t, f)
	res := make(chan []Endpoint, 1)
	go func() {
		e, _ := get(t, c, "echo")
		res <- e
	}()
	w := f.nextWatch(t)
	w.send(Reset, ep("a:1"), remote("gw:4443", "e-1.gw"), remote("gw:4443", "e-2.gw"), ep("b:2"))
	if got := addrsOf(<-res); !reflect.DeepEqual(got, []string{"a:1", "b:2"}) {
		t.Fatalf("first = %v, want the local a:1 b:2", got)
	}
	for _, s := range []struct {
		name string
		kind UpdateKind
		eps  []Endpoint
		want []string
	}{
		{"a local one goes", Remove, []Endpoint{ep("a:1")}, []string{"b:2"}},
		{"the last local one is not ready: remote", Add, []Endpoint{notReady("b:2")}, []string{"gw:4443", "gw:4443"}},
		{"a local one is back", Add, []Endpoint{ep("c:3")}, []string{"c:3"}},
		{"all local ones removed", Remove, []Endpoint{ep("c:3"), ep("b:2")}, []string{"gw:4443", "gw:4443"}},
	} {
		w.send(s.kind, s.eps...)
		eventuallyGet(t, c, "echo", s.want...)
	}
}
