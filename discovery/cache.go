package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Cache timing.
const (
	// DefaultRetryInterval is the minimum time between two resolve
	// attempts for one name after a failed one.
	DefaultRetryInterval = time.Second
	minWatchBackoff      = 100 * time.Millisecond
	maxWatchBackoff      = 10 * time.Second
)

var errCacheClosed = fmt.Errorf("discovery: cache is closed: %w", ErrClosed)

// Cache keeps the current endpoint set of each service it is asked about,
// sharing one Watch per service name among all callers. It is safe for
// concurrent use.
//
// The first Endpoints call for a name resolves it and waits for the first
// update; later calls read an immutable snapshot without taking a lock.
// Entries are kept until Close.
type Cache struct {
	r      Resolver
	logger *slog.Logger

	ctx    context.Context // cancelled by Close; bounds all watch goroutines
	cancel context.CancelFunc
	closed atomic.Bool

	// entries is a copy-on-write map: readers load it without locking,
	// writers copy it under mu.
	entries atomic.Pointer[map[string]*cacheEntry]
	mu      sync.Mutex // serializes entry creation, Close and wg.Add
	wg      sync.WaitGroup

	// Timing, settable by tests before first use.
	retryInterval time.Duration
	minBackoff    time.Duration
	maxBackoff    time.Duration
	now           func() time.Time
}

// NewCache returns a Cache over r. logger receives watch failures;
// slog.Default() if nil. Call Close to stop all watches.
func NewCache(r Resolver, logger *slog.Logger) *Cache {
	if logger == nil {
		logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{
		r:             r,
		logger:        logger,
		ctx:           ctx,
		cancel:        cancel,
		retryInterval: DefaultRetryInterval,
		minBackoff:    minWatchBackoff,
		maxBackoff:    maxWatchBackoff,
		now:           time.Now,
	}
	c.entries.Store(&map[string]*cacheEntry{})
	return c
}

type cacheEntry struct {
	name string
	snap atomic.Pointer[cacheSnapshot]

	mu          sync.Mutex
	running     bool          // a watch goroutine exists
	ready       chan struct{} // closed when the running attempt has a first result
	lastAttempt time.Time     // when the last attempt ended without a live watch
}

// cacheSnapshot is immutable once published.
type cacheSnapshot struct {
	eps []Endpoint // the ready endpoints; nil when none
	err error      // nil iff len(eps) > 0
	// live: a watch is delivering updates and eps is current.
	live bool
}

// Endpoints returns the current ready endpoints of name (not-ready ones
// are never returned, so a balancer picking from the result cannot pick
// one). The returned slice is a shared snapshot: callers must not modify
// it or its elements.
//
// The first call for a name starts a watch and waits, bounded by ctx, for
// its first update. An empty set, or one with no ready endpoint, yields an
// error wrapping ErrNoEndpoints.
// A resolve failure (such as ErrUnknownService) is returned as is, wrapped,
// and not kept: a later call resolves again, but at most once per second
// per name; calls in between get the last error. If a watch fails, the
// Cache logs it and re-resolves with backoff, serving the last known set
// meanwhile. After Close, it returns an error wrapping ErrClosed.
func (c *Cache) Endpoints(ctx context.Context, name string) ([]Endpoint, error) {
	if !c.closed.Load() {
		if e := (*c.entries.Load())[name]; e != nil {
			if s := e.snap.Load(); s != nil && s.live {
				return s.eps, s.err
			}
		}
	}
	return c.slowEndpoints(ctx, name)
}

func (c *Cache) slowEndpoints(ctx context.Context, name string) ([]Endpoint, error) {
	if c.closed.Load() {
		return nil, errCacheClosed
	}
	e, err := c.entry(name)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	s := e.snap.Load()
	if s != nil && s.live {
		e.mu.Unlock()
		return s.eps, s.err
	}
	if !e.running {
		if s != nil && c.now().Sub(e.lastAttempt) < c.retryInterval {
			e.mu.Unlock()
			return s.eps, s.err
		}
		if err := c.start(e); err != nil {
			e.mu.Unlock()
			return nil, err
		}
	}
	ready := e.ready
	e.mu.Unlock()

	select {
	case <-ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("discovery: waiting for endpoints of %q: %w", name, ctx.Err())
	case <-c.ctx.Done():
		return nil, errCacheClosed
	}
	if c.closed.Load() {
		return nil, errCacheClosed
	}
	s = e.snap.Load()
	return s.eps, s.err
}

// entry returns the entry for name, creating it if needed.
func (c *Cache) entry(name string) (*cacheEntry, error) {
	if e := (*c.entries.Load())[name]; e != nil {
		return e, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil, errCacheClosed
	}
	old := *c.entries.Load()
	if e := old[name]; e != nil {
		return e, nil
	}
	m := make(map[string]*cacheEntry, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	e := &cacheEntry{name: name}
	m[name] = e
	c.entries.Store(&m)
	return e, nil
}

// start launches a watch goroutine for e. Called with e.mu held.
func (c *Cache) start(e *cacheEntry) error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return errCacheClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	e.running = true
	e.ready = make(chan struct{})
	go c.run(e, e.ready)
	return nil
}

// run owns the watch of one entry until the watch ends for good, a
// resolve fails, or the Cache is closed.
func (c *Cache) run(e *cacheEntry, ready chan struct{}) {
	defer c.wg.Done()
	readyClosed := false
	signal := func() {
		if !readyClosed {
			readyClosed = true
			close(ready)
		}
	}
	// stop publishes s (if non-nil) and marks the goroutine gone.
	stop := func(s *cacheSnapshot) {
		e.mu.Lock()
		if s != nil {
			e.snap.Store(s)
		}
		e.running = false
		e.lastAttempt = c.now()
		signal()
		e.mu.Unlock()
	}

	var cur []Endpoint
	gotUpdate := false // some watch in this run delivered an update
	backoff := c.minBackoff
	for {
		w, err := c.r.Resolve(c.ctx, e.name)
		if err != nil {
			if c.ctx.Err() != nil {
				stop(nil)
				return
			}
			err = fmt.Errorf("discovery: resolve %q: %w", e.name, err)
			if !gotUpdate || errors.Is(err, ErrUnknownService) {
				stop(&cacheSnapshot{err: err})
				return
			}
			// The service was known a moment ago; keep serving the last
			// set while retrying.
			c.logger.Warn("discovery: re-resolve failed; retrying", "service", e.name, "err", err, "backoff", backoff)
			if !c.sleep(&backoff) {
				stop(nil)
				return
			}
			continue
		}

		err = c.consume(e, w, &cur, &gotUpdate, signal, &backoff)
		w.Close()
		switch {
		case c.ctx.Err() != nil:
			stop(nil)
			return
		case errors.Is(err, ErrClosed):
			// The resolver ended the watch. Keep the last set (no longer
			// live) so callers are served until the next call re-resolves.
			c.logger.Info("discovery: watch closed by resolver", "service", e.name)
			if gotUpdate {
				stop(newSnapshot(e.name, cur, false))
			} else {
				stop(&cacheSnapshot{err: fmt.Errorf("discovery: watch %q: %w", e.name, err)})
			}
			return
		}
		c.logger.Warn("discovery: watch failed; re-resolving", "service", e.name, "err", err, "backoff", backoff)
		if !gotUpdate {
			// Let waiting callers see the failure instead of their deadline.
			e.mu.Lock()
			e.snap.Store(&cacheSnapshot{err: fmt.Errorf("discovery: watch %q: %w", e.name, err)})
			signal()
			e.mu.Unlock()
		}
		if !c.sleep(&backoff) {
			stop(nil)
			return
		}
	}
}

// consume applies the updates of w until it fails.
func (c *Cache) consume(e *cacheEntry, w Watch, cur *[]Endpoint, gotUpdate *bool, signal func(), backoff *time.Duration) error {
	for {
		u, err := w.Next(c.ctx)
		if err != nil {
			return err
		}
		next, ok := applyUpdate(*cur, u)
		if !ok {
			c.logger.Warn("discovery: ignoring update of unknown kind", "service", e.name, "kind", u.Kind)
			continue
		}
		*cur = next
		*gotUpdate = true
		*backoff = c.minBackoff
		e.mu.Lock()
		e.snap.Store(newSnapshot(e.name, next, true))
		signal()
		e.mu.Unlock()
	}
}

// newSnapshot publishes the ready endpoints of eps, the local ones only
// while there is one (PreferLocal: a federated service fails over to
// other clusters when its local endpoints are gone, and back when they
// return); the set itself stays in run's cur, which later updates apply
// to.
func newSnapshot(name string, eps []Endpoint, live bool) *cacheSnapshot {
	if len(eps) == 0 {
		return &cacheSnapshot{live: live, err: fmt.Errorf("discovery: service %q: %w", name, ErrNoEndpoints)}
	}
	ready := Ready(eps)
	if len(ready) == 0 {
		return &cacheSnapshot{live: live, err: fmt.Errorf("discovery: service %q: none of its %d endpoints is ready: %w", name, len(eps), ErrNoEndpoints)}
	}
	return &cacheSnapshot{eps: PreferLocal(ready), live: live}
}

// sleep waits for the current backoff (with jitter) and doubles it. It
// reports false if the Cache was closed meanwhile.
func (c *Cache) sleep(backoff *time.Duration) bool {
	d := *backoff
	if d > 0 {
		d = d/2 + rand.N(d/2+1)
	}
	*backoff = min(2**backoff, c.maxBackoff)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// applyUpdate returns a new slice with u applied to cur; cur is not
// modified (it may be a published snapshot). ok is false for an unknown
// kind.
func applyUpdate(cur []Endpoint, u Update) (next []Endpoint, ok bool) {
	switch u.Kind {
	case Reset:
		return slices.Clone(u.Endpoints), true
	case Add:
		next = slices.Clone(cur)
		idx := make(map[string]int, len(next))
		for i, ep := range next {
			idx[ep.Key()] = i
		}
		for _, ep := range u.Endpoints {
			if i, dup := idx[ep.Key()]; dup {
				next[i] = ep
			} else {
				idx[ep.Key()] = len(next)
				next = append(next, ep)
			}
		}
		return next, true
	case Remove:
		gone := make(map[string]bool, len(u.Endpoints))
		for _, ep := range u.Endpoints {
			gone[ep.Key()] = true
		}
		next = make([]Endpoint, 0, len(cur))
		for _, ep := range cur {
			if !gone[ep.Key()] {
				next = append(next, ep)
			}
		}
		return next, true
	}
	return cur, false
}

// Close stops every watch goroutine and waits for them to exit. Endpoints
// then fails with an error wrapping ErrClosed. It is safe to call more
// than once.
func (c *Cache) Close() error {
	c.mu.Lock()
	c.closed.Store(true)
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}
