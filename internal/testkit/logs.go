package testkit

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// LogBuffer collects log output that running servers write from any
// goroutine while the test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logger is a text-format slog logger into b that keeps records at level
// and above.
func (b *LogBuffer) Logger(level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: level}))
}

// Lines returns the text-format lines whose message is msg.
func (b *LogBuffer) Lines(msg string) []string {
	var out []string
	for l := range strings.SplitSeq(b.String(), "\n") {
		if strings.Contains(l, `msg="`+msg+`"`) || strings.Contains(l, "msg="+msg+" ") || strings.HasSuffix(l, "msg="+msg) {
			out = append(out, l)
		}
	}
	return out
}

// Count is how many times s occurs in what was written.
func (b *LogBuffer) Count(s string) int { return strings.Count(b.String(), s) }

// DebugLogger is the logger for components under test that are not
// asserted on: debug records on stderr when QUICMESH_TEST_LOG is set (to
// follow a failing test), nil (the component's default, usually discard)
// otherwise.
func DebugLogger() *slog.Logger {
	if os.Getenv("QUICMESH_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
