package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The demo's check lines keep their columns whatever the names, details
// and durations are.
func TestDemoChecksAligned(t *testing.T) {
	var out bytes.Buffer
	failed := runChecks(&out, []demoCheck{
		{"short", func(context.Context) (string, error) {
			return "a detail longer than any column width the table had before", nil
		}},
		{"a much longer check name", func(context.Context) (string, error) { return "mean 574µs", nil }},
		{"fails", func(context.Context) (string, error) { return "", errors.New("boom") }},
	}, time.Minute)
	if failed != 1 {
		t.Errorf("failed = %d, want 1", failed)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines:\n%s", len(lines), out.String())
	}
	// Every detail starts at the same rune offset.
	details := []string{"a detail longer", "mean 574µs", "boom"}
	detailAt := -1
	for i, l := range lines {
		at := utf8.RuneCountInString(l[:strings.Index(l, details[i])])
		if detailAt >= 0 && at != detailAt {
			t.Errorf("misaligned:\n%s", out.String())
		}
		detailAt = at
	}
	if !strings.HasPrefix(lines[2], "  FAIL  fails ") || !strings.HasSuffix(lines[2], "  boom") {
		t.Errorf("failure line %q", lines[2])
	}
}

func TestThroughputOnlyForTimedTransfers(t *testing.T) {
	tests := []struct {
		size int
		d    time.Duration
		want string
	}{
		{1 << 10, time.Millisecond, ""}, // a 1 KiB echo says nothing about throughput
		{minTimedBytes - 1, time.Second, ""},
		{16 << 20, time.Second, ", 134 Mbit/s each way"},
		{16 << 20, 0, ""},
	}
	for _, tt := range tests {
		if got := throughput(tt.size, tt.d); got != tt.want {
			t.Errorf("throughput(%d, %v) = %q, want %q", tt.size, tt.d, got, tt.want)
		}
	}
	for n, want := range map[int]string{1 << 10: "1 KiB", 16 << 20: "16 MiB", 64 << 10: "64 KiB", 1000: "1000 bytes"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// Each check runs under the demo's --timeout: one that would hang fails
// when it runs out.
func TestDemoCheckTimeout(t *testing.T) {
	var out bytes.Buffer
	failed := runChecks(&out, []demoCheck{
		{"hangs", func(ctx context.Context) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		}},
	}, 10*time.Millisecond)
	if failed != 1 || !strings.Contains(out.String(), "context deadline exceeded") {
		t.Fatalf("failed = %d, output %q; want the check to fail at its deadline", failed, out.String())
	}
}
