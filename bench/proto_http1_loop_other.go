//go:build !linux

package bench

import (
	"context"
	"sync"
)

// h1EventLoops: the event loops are Linux only (epoll); elsewhere every
// worker runs on its own goroutine.
var h1EventLoops = false

func (t *http1Target) runLoops(*engine, []worker, *sync.WaitGroup) {
	panic("bench: http1 event loops are not supported on this system")
}

func (t *http1Target) rawPreconnect(context.Context) {
	panic("bench: http1 event loops are not supported on this system")
}
