package transport

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// waitGroupDone waits for wg within the test's hang guard.
func waitGroupDone(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	ended := make(chan struct{})
	go func() { wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(time.Until(testkit.HangGuard(t))):
		t.Fatalf("%s: workers still running at the hang guard", what)
	}
}

// chanAcceptors are acceptors whose jobs come from a channel, as streams
// come from AcceptStream; cancelling conn ends them.
func chanAcceptors(conn context.Context, wg *sync.WaitGroup, jobs <-chan int, maxIdle int32, idleFor time.Duration, serve func(int)) *acceptors[int] {
	accept := func(ctx context.Context) (int, error) {
		select {
		case j := <-jobs:
			return j, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	a := &acceptors[int]{conn: conn, accept: accept, serve: serve, wg: wg, maxIdle: maxIdle, idleFor: idleFor}
	a.init()
	return a
}

// Jobs in flight together each get their own worker (none waits for
// another: the unbuffered send of each finds a worker waiting), and one
// more waits beside them; once they finish, at most maxIdle wait. Jobs
// one at a time reuse the waiting workers. Sweeps end the workers no
// job needed, all but one; the rest end with the connection.
func TestWorkers(t *testing.T) {
	testkit.CheckLeaks(t)
	tests := []struct {
		name       string
		concurrent int           // jobs held in flight together
		maxIdle    int32         // idle workers kept
		idleFor    time.Duration // sweep period
		wantIdle   int32         // idle workers once the jobs finished
	}{
		{"burst within the idle bound", 4, 8, time.Hour, 5},
		{"burst beyond the idle bound", 12, 4, time.Hour, 4},
		{"idle workers swept", 6, 8, 20 * time.Millisecond, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, endConn := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			jobs := make(chan int)
			started := make(chan int, tt.concurrent)
			release := make(chan struct{})
			releaseAll := sync.OnceFunc(func() { close(release) })
			var a *acceptors[int]
			t.Cleanup(func() {
				releaseAll()
				endConn()
				a.stop()
				waitGroupDone(t, &wg, "connection ended")
			})
			a = chanAcceptors(conn, &wg, jobs, tt.maxIdle, tt.idleFor, func(job int) {
				started <- job
				<-release
			})
			for i := range tt.concurrent {
				jobs <- i
			}
			// Every job runs before any is released: none was queued
			// behind another.
			for range tt.concurrent {
				<-started
			}
			if got := a.live.Load(); got != int32(tt.concurrent)+1 {
				t.Errorf("%d workers for %d jobs in flight, want one more waiting", got, tt.concurrent)
			}
			releaseAll()
			settled := func() bool { return a.waiting.Load() == tt.wantIdle && a.live.Load() == tt.wantIdle }
			testkit.Eventually(t, fmt.Sprintf("%d idle workers", tt.wantIdle), settled)

			// Further jobs, one at a time, go to the waiting workers.
			for i := range 20 {
				jobs <- i
				<-started
				testkit.Eventually(t, "the workers waiting again", settled)
			}
			if got := a.live.Load(); got != tt.wantIdle {
				t.Errorf("%d workers after 20 jobs one at a time, want the %d idle ones reused", got, tt.wantIdle)
			}
		})
	}
}

// BenchmarkWorkers is the hand-off of one job to a worker and back, with
// a job that needs a 24 KiB stack as a stream's app round trip does
// (measured 32 KiB): "new goroutine" is a goroutine per job, as Serve did
// before workers, growing its stack each time; "workers" reuses one.
func BenchmarkWorkers(b *testing.B) {
	finished := make(chan struct{})
	job := func(int) {
		deepStack(0)
		finished <- struct{}{}
	}
	b.Run("new goroutine", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			go job(i)
			<-finished
		}
	})
	b.Run("workers", func(b *testing.B) {
		conn, endConn := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		jobs := make(chan int)
		a := chanAcceptors(conn, &wg, jobs, maxIdleWorkers, workerIdle, job)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			jobs <- i
			<-finished
		}
		endConn()
		a.stop()
		wg.Wait()
	})
}

// deepStack uses about 24 KiB of stack.
//
//go:noinline
func deepStack(depth int) byte {
	var frame [3 << 10]byte
	frame[depth] = byte(depth)
	if depth < 7 {
		return deepStack(depth+1) + frame[depth]
	}
	return frame[depth]
}
