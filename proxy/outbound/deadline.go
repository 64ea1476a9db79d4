package outbound

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// lazyDeadline is a context bounded by a deadline whose timer is made
// only if it is needed: when something waits on Done, or asks for Err,
// Value or the cause once the deadline has passed. Connecting a request
// to a pooled connection, the common case, asks none of that, and a
// context.WithTimeout cost a timer, its cancel context and a
// registration with the request's context on every request
// (docs/benchmarks.md, "Client sidecar"). Callers must call release when
// done with it, as with a context.CancelFunc.
type lazyDeadline struct {
	parent   context.Context
	deadline time.Time

	released atomic.Bool
	inner    atomic.Pointer[context.Context] // the real context, once made
	mu       sync.Mutex                      // making it
	cancel   context.CancelFunc              // the real context's, under mu
}

func withLazyTimeout(parent context.Context, d time.Duration) *lazyDeadline {
	return &lazyDeadline{parent: parent, deadline: time.Now().Add(d)}
}

// materialize makes the real context (a context.WithDeadline of the
// parent), if it is not made yet, and returns it. Made after release, it
// is cancelled at once, as a context.WithTimeout would be.
func (c *lazyDeadline) materialize() context.Context {
	if p := c.inner.Load(); p != nil {
		return *p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.inner.Load(); p != nil {
		return *p
	}
	ctx, cancel := context.WithDeadline(c.parent, c.deadline)
	if c.released.Load() {
		cancel()
	}
	c.cancel = cancel
	c.inner.Store(&ctx)
	return ctx
}

// current is the real context if it was made, else nil; a deadline that
// has passed, or a release, makes it, so that Err and the cause say so.
func (c *lazyDeadline) current() context.Context {
	if p := c.inner.Load(); p != nil {
		return *p
	}
	if c.released.Load() || !time.Now().Before(c.deadline) {
		return c.materialize()
	}
	return nil
}

func (c *lazyDeadline) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *lazyDeadline) Done() <-chan struct{} { return c.materialize().Done() }

func (c *lazyDeadline) Err() error {
	if ctx := c.current(); ctx != nil {
		return ctx.Err()
	}
	// Ended with the parent, if it has: the real context, made later,
	// would be done at once with the same error.
	return c.parent.Err()
}

// Value is the parent's, or the real context's once made: context.Cause
// finds the nearest cancel context through Value.
func (c *lazyDeadline) Value(key any) any {
	if ctx := c.current(); ctx != nil {
		return ctx.Value(key)
	}
	return c.parent.Value(key)
}

// release ends the context, as its context.CancelFunc would: its timer
// is stopped, if one was made.
func (c *lazyDeadline) release() {
	c.released.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
	}
}
