package transport

import (
	"fmt"
	"runtime"
	"strings"
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

// parked counts the workers started by the calling goroutine that are
// blocked waiting for a job: idle counts a worker from just before it
// blocks, and a job sent in between goes to a new worker (by design), so a
// test that wants a certain hand-off waits for the workers to be parked.
// (The traceback's arguments cannot tell whose workers they are: they may
// be stale.)
func parked() int {
	buf := make([]byte, 256)
	self, _, _ := strings.Cut(string(buf[:runtime.Stack(buf, false)]), " [")
	createdBy := ").run in " + self + "\n"
	count := 0
	for _, g := range testkit.Stacks() {
		head, _, _ := strings.Cut(g, "\n")
		if strings.Contains(head, "[select") && strings.Contains(g, ").loop(") && strings.Contains(g, createdBy) {
			count++
		}
	}
	return count
}

// Jobs run one at a time reuse one worker; jobs in flight together each
// get their own (none waits for another), and once they finish only
// maxIdle workers stay. Idle workers end after idleFor, or when the
// connection ends.
func TestWorkers(t *testing.T) {
	testkit.CheckLeaks(t)
	tests := []struct {
		name       string
		concurrent int           // jobs held in flight together
		maxIdle    int32         // idle workers kept
		idleFor    time.Duration // how long an idle worker waits
		wantIdle   int32         // idle workers once the jobs finished
	}{
		{"one at a time", 1, 4, time.Hour, 1},
		{"burst within the idle bound", 4, 4, time.Hour, 4},
		{"burst beyond the idle bound", 12, 4, time.Hour, 4},
		{"idle workers time out", 6, 4, 20 * time.Millisecond, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan struct{})
			var wg sync.WaitGroup
			started := make(chan int, tt.concurrent)
			release := make(chan struct{})
			releaseAll := sync.OnceFunc(func() { close(release) })
			t.Cleanup(func() {
				releaseAll()
				close(done)
				waitGroupDone(t, &wg, "connection ended")
			})
			w := newWorkers(done, &wg, func(job int) {
				started <- job
				<-release
			})
			w.maxIdle, w.idleFor = tt.maxIdle, tt.idleFor
			for i := range tt.concurrent {
				w.run(i)
			}
			// Every job runs before any is released: none was queued
			// behind another.
			for range tt.concurrent {
				<-started
			}
			if got := w.live.Load(); got != int32(tt.concurrent) {
				t.Errorf("%d workers for %d jobs in flight", got, tt.concurrent)
			}
			releaseAll()
			settled := func() bool {
				return w.idle.Load() == tt.wantIdle && w.live.Load() == tt.wantIdle && parked() == int(tt.wantIdle)
			}
			testkit.Eventually(t, fmt.Sprintf("%d idle workers", tt.wantIdle), settled)

			if tt.wantIdle > 0 {
				// Further jobs, one at a time, each once the workers are
				// parked again, go to the idle workers.
				for i := range 20 {
					w.run(i)
					<-started
					testkit.Eventually(t, "the workers parked again", settled)
				}
				if got := w.live.Load(); got != tt.wantIdle {
					t.Errorf("%d workers after 20 jobs one at a time, want the %d idle ones reused", got, tt.wantIdle)
				}
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
		done := make(chan struct{})
		var wg sync.WaitGroup
		w := newWorkers(done, &wg, job)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			w.run(i)
			<-finished
		}
		close(done)
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
