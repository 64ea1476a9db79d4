package schedlat

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestWaited(t *testing.T) {
	w := New()
	if w.Waited(time.Hour) {
		t.Fatal("a goroutine waited an hour to run")
	}
	// One P and goroutines that spin for 200 ms: those woken meanwhile
	// wait for the spinners' 10 ms preemption slices, many of them.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var wg sync.WaitGroup
	stop := time.Now().Add(200 * time.Millisecond)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(stop) {
			}
		})
	}
	for range 200 {
		wg.Go(func() { time.Sleep(time.Millisecond) })
	}
	wg.Wait()
	if !w.Waited(5 * time.Millisecond) {
		t.Fatal("200 goroutines woken behind 4 spinning ones on one P: none waited 5 ms to run")
	}
	if w.Waited(0) {
		t.Fatal("limit 0 reported a wait")
	}
}
