package schedlat

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// queueBehindSpinners runs, on one P, 4 goroutines that spin for d and
// n that sleep 1 ms: those woken meanwhile wait for the spinners' 10 ms
// preemption slices, many of them.
func queueBehindSpinners(d time.Duration, n int) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(stop) {
			}
		})
	}
	for range n {
		wg.Go(func() { time.Sleep(time.Millisecond) })
	}
	wg.Wait()
}

func TestWaited(t *testing.T) {
	w := New()
	if w.Waited(time.Hour) {
		t.Fatal("a goroutine waited an hour to run")
	}
	queueBehindSpinners(200*time.Millisecond, 200)
	if !w.Waited(5 * time.Millisecond) {
		t.Fatal("200 goroutines woken behind 4 spinning ones on one P: none waited 5 ms to run")
	}
	if w.Waited(0) {
		t.Fatal("limit 0 reported a wait")
	}
}

// Longest reports the waits behind spinning goroutines, as TestWaited.
func TestLongest(t *testing.T) {
	w := New()
	queueBehindSpinners(100*time.Millisecond, 100)
	if l := w.Longest(); l < 5*time.Millisecond {
		t.Fatalf("longest wait %v behind 4 spinning goroutines on one P; want at least 5 ms", l)
	}
}
