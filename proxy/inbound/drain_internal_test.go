package inbound

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// stallingConn is a drained peer connection with no streams whose first
// stream count in the drain loop takes stall: the process did not run
// for that long right after the GOAWAY went out.
type stallingConn struct {
	PeerConn
	ctx    context.Context
	stall  time.Duration
	calls  atomic.Int64
	after  atomic.Int64 // counts made after the stall
	closed chan struct{}
}

func (c *stallingConn) Peer() identity.ID               { return identity.ID{} }
func (c *stallingConn) Context() context.Context        { return c.ctx }
func (c *stallingConn) GoAway(context.Context) error    { return nil }
func (c *stallingConn) Close(meshcode.ConnCode, string) { close(c.closed) }
func (c *stallingConn) ActiveStreams() int64 {
	// Calls 1 and 2 are retireConn's before its loop; 3 is the loop's
	// first.
	switch n := c.calls.Add(1); {
	case n == 3:
		time.Sleep(c.stall)
	case n > 3:
		c.after.Add(1)
	}
	return 0
}

// A stall of the whole process longer than drainQuiet just after the
// GOAWAY went out is not quiet: the peer may not have run in it either,
// and may be about to start work on the connection it has not yet heard
// is going away. The connection is closed only once this process has
// itself watched it stay quiet for drainQuiet.
func TestDrainQuietNotSpentInAStall(t *testing.T) {
	c := &stallingConn{ctx: context.Background(), stall: 2 * drainQuiet, closed: make(chan struct{})}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	s.retireConn(context.Background(), &peerConn{conn: c, log: s.log}, c.GoAway, meshcode.ConnShutdown)
	select {
	case <-c.closed:
	default:
		t.Fatal("retireConn returned without closing the connection")
	}
	if got, want := c.after.Load(), int64(drainQuiet/drainTick); got < want {
		t.Fatalf("closed after %d stream counts following the stall, want at least %d (the quiet period was spent in the stall)", got, want)
	}
}

// awareConn is a quiet peer connection whose peer takes part in the drain
// handshake but has not said it finished; its GOAWAY fails with goAwayErr.
type awareConn struct {
	PeerConn
	goAwayErr error
	closed    chan struct{}
}

func (c *awareConn) Peer() identity.ID               { return identity.ID{} }
func (c *awareConn) Context() context.Context        { return context.Background() }
func (c *awareConn) GoAway(context.Context) error    { return c.goAwayErr }
func (c *awareConn) Close(meshcode.ConnCode, string) { close(c.closed) }
func (c *awareConn) ActiveStreams() int64            { return 0 }
func (c *awareConn) DrainAware() bool                { return true }
func (c *awareConn) Finished() <-chan struct{}       { return nil }

// A peer that takes part in the handshake but was never told to go away
// (sending the GOAWAY failed) will not say it finished: its connection is
// drained by the quiet rule, not held until the grace period ends.
func TestDrainQuietRuleWhenTheGoAwayWasNotSent(t *testing.T) {
	c := &awareConn{goAwayErr: errors.New("no stream credit"), closed: make(chan struct{})}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithDeadline(context.Background(), testkit.HangGuard(t))
	defer cancel()
	s.retireConn(ctx, &peerConn{conn: c, log: s.log}, c.GoAway, meshcode.ConnShutdown)
	select {
	case <-c.closed:
	default:
		t.Fatal("retireConn returned without closing the connection")
	}
	if ctx.Err() != nil {
		t.Fatal("the connection was held until the grace period ended")
	}
}
