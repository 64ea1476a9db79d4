package sidecar_test

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkLeaks fails the test if goroutines started during it are still
// running a few seconds after its cleanups ran.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, filterStacks(string(buf)))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func filterStacks(s string) string {
	var out []string
	for _, g := range strings.Split(s, "\n\n") {
		if strings.Contains(g, "quicmesh") || strings.Contains(g, "quic-go") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
