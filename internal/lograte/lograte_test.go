package lograte

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestLogLimiterAllow(t *testing.T) {
	type step struct {
		advance    time.Duration
		key        string
		ok         bool
		suppressed int
	}
	tests := []struct {
		name    string
		maxKeys int
		steps   []step
	}{
		{"first line passes, repeats within the interval are suppressed, the next line reports them", 8, []step{
			{0, "a", true, 0},
			{time.Second, "a", false, 0},
			{time.Second, "a", false, 0},
			{8 * time.Second, "a", true, 2},
			{time.Second, "a", false, 0},
			{10 * time.Second, "a", true, 1},
			{10 * time.Second, "a", true, 0},
		}},
		{"keys are independent", 8, []step{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{time.Second, "a", false, 0},
			{0, "b", false, 0},
			{9 * time.Second, "b", true, 1},
		}},
		{"a full table shares the overflow bucket", 2, []step{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{0, "c", true, 0}, // first line of the overflow bucket
			{0, "d", false, 0},
			{0, "e", false, 0},
			{0, "a", false, 0}, // tracked keys keep their own bucket
		}},
		{"quiet keys make room", 2, []step{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{10 * time.Second, "c", true, 0},
			{0, "d", true, 0},
			{0, "e", true, 0}, // table full of fresh keys: overflow
			{0, "f", false, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1000, 0)}
			l := New(10*time.Second, tt.maxKeys, clock.now)
			for i, s := range tt.steps {
				clock.advance(s.advance)
				ok, suppressed := l.Allow(s.key)
				if ok != s.ok || suppressed != s.suppressed {
					t.Fatalf("step %d (%q): Allow = %v, %d; want %v, %d", i, s.key, ok, suppressed, s.ok, s.suppressed)
				}
			}
			if len(l.keys) > tt.maxKeys+1 {
				t.Fatalf("%d keys tracked, want at most %d plus overflow", len(l.keys), tt.maxKeys)
			}
		})
	}
}

func TestLogLimiterLogAddsSuppressedCount(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := New(10*time.Second, 0, clock.now)
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: dropTime}))
	for range 5 {
		l.Log(logger, slog.LevelWarn, "peer|reason", "dial failed", "peer", "10.0.0.1:4143")
		clock.advance(time.Second)
	}
	clock.advance(10 * time.Second)
	l.Log(logger, slog.LevelWarn, "peer|reason", "dial failed", "peer", "10.0.0.1:4143")
	want := "level=WARN msg=\"dial failed\" peer=10.0.0.1:4143\n" +
		"level=WARN msg=\"dial failed\" peer=10.0.0.1:4143 suppressed=4\n"
	if got := buf.String(); got != want {
		t.Fatalf("logged:\n%s\nwant:\n%s", got, want)
	}
	var nilLimiter *Limiter
	buf.Reset()
	for i := range 3 {
		nilLimiter.Log(logger, slog.LevelInfo, "k", fmt.Sprint(i))
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("nil limiter logged %d lines, want every one of 3", n)
	}
}

func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}
