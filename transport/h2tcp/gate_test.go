package h2tcp

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// A handler whose goroutine starts while Serve is returning (x/net/http2
// does not wait for handler goroutines) either runs entirely before
// closeAndWait returns or not at all; a bare sync.WaitGroup let it run
// afterwards, and -race reported its Add racing with Wait.
func TestHandlerGate(t *testing.T) {
	for range 200 {
		var g handlerGate
		var waited atomic.Bool
		var late atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !g.enter() {
					return
				}
				defer g.leave()
				for range 3 {
					if waited.Load() {
						late.Add(1)
					}
					runtime.Gosched()
				}
			}()
		}
		g.closeAndWait()
		waited.Store(true)
		wg.Wait()
		if n := late.Load(); n > 0 {
			t.Fatalf("a handler ran %d times after closeAndWait returned", n)
		}
		if g.enter() {
			t.Fatal("a closed gate admitted a handler")
		}
	}
}
