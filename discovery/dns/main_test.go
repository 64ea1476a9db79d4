package dns

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if a goroutine of this package outlives the
// tests: every watch's refresh loop and every lookup must end with Close.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitForPackageGoroutines(10 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of discovery/dns leaked:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitForPackageGoroutines waits until no goroutine runs code of this
// package (other than TestMain) and returns the stacks of those left.
func waitForPackageGoroutines(limit time.Duration) string {
	deadline := time.Now().Add(limit)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "quicmesh/discovery/dns.") && !strings.Contains(g, "dns.TestMain") &&
				!strings.Contains(g, "dns.waitForPackageGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
