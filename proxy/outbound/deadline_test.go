package outbound

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// TestLazyDeadline checks that lazyDeadline behaves as the
// context.WithTimeout it replaces, whether or not its timer was made.
func TestLazyDeadline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		// act runs before the checks; it may wait on Done, cancel the
		// parent or release.
		act       func(t *testing.T, c *lazyDeadline, cancelParent context.CancelCauseFunc)
		wantErr   error
		wantCause error
	}{
		{name: "live, never waited on", timeout: time.Hour,
			act: func(*testing.T, *lazyDeadline, context.CancelCauseFunc) {}},
		{name: "live, waited on", timeout: time.Hour,
			act: func(t *testing.T, c *lazyDeadline, _ context.CancelCauseFunc) {
				select {
				case <-c.Done():
					t.Fatal("done before its deadline")
				default:
				}
			}},
		{name: "deadline passed, never waited on", timeout: time.Nanosecond,
			act: func(*testing.T, *lazyDeadline, context.CancelCauseFunc) {
				time.Sleep(time.Millisecond)
			},
			wantErr: context.DeadlineExceeded, wantCause: context.DeadlineExceeded},
		{name: "deadline passed while waited on", timeout: 10 * time.Millisecond,
			act:     func(_ *testing.T, c *lazyDeadline, _ context.CancelCauseFunc) { <-c.Done() },
			wantErr: context.DeadlineExceeded, wantCause: context.DeadlineExceeded},
		{name: "parent cancelled, never waited on", timeout: time.Hour,
			act:     func(_ *testing.T, _ *lazyDeadline, cancel context.CancelCauseFunc) { cancel(errParentGone) },
			wantErr: context.Canceled, wantCause: errParentGone},
		{name: "parent cancelled while waited on", timeout: time.Hour,
			act: func(_ *testing.T, c *lazyDeadline, cancel context.CancelCauseFunc) {
				go cancel(errParentGone)
				<-c.Done()
			},
			wantErr: context.Canceled, wantCause: errParentGone},
		{name: "released", timeout: time.Hour,
			act:     func(_ *testing.T, c *lazyDeadline, _ context.CancelCauseFunc) { c.release() },
			wantErr: context.Canceled, wantCause: context.Canceled},
		{name: "released after waiting", timeout: time.Hour,
			act: func(_ *testing.T, c *lazyDeadline, _ context.CancelCauseFunc) {
				c.Done()
				c.release()
			},
			wantErr: context.Canceled, wantCause: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancelParent := context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, "v"))
			defer cancelParent(nil)
			c := withLazyTimeout(parent, tc.timeout)
			defer c.release()
			if d, ok := c.Deadline(); !ok || time.Until(d) > tc.timeout {
				t.Fatalf("deadline %v, %v; want within %v", d, ok, tc.timeout)
			}
			tc.act(t, c, cancelParent)
			if err := c.Err(); !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Err() = %v, want %v", err, tc.wantErr)
			}
			if cause := context.Cause(c); !errors.Is(cause, tc.wantCause) || (tc.wantCause == nil) != (cause == nil) {
				t.Fatalf("Cause = %v, want %v", cause, tc.wantCause)
			}
			select {
			case <-c.Done():
				if tc.wantErr == nil {
					t.Fatal("Done closed on a live context")
				}
			default:
				if tc.wantErr != nil {
					t.Fatal("Done open on an ended context")
				}
			}
			if v := c.Value(ctxKey{}); v != "v" {
				t.Fatalf("Value = %v, want the parent's", v)
			}
		})
	}
}

// TestLazyDeadlineShorterParent: the parent's earlier deadline wins.
func TestLazyDeadlineShorterParent(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := withLazyTimeout(parent, time.Hour)
	defer c.release()
	want, _ := parent.Deadline()
	if d, _ := c.Deadline(); !d.Equal(want) {
		t.Fatalf("deadline %v, want the parent's %v", d, want)
	}
}

var errParentGone = errors.New("parent gone")

// BenchmarkLazyDeadline is the connect step's context when nothing waits
// on it (a pooled connection), against the context.WithTimeout it
// replaced; the parent is a request's cancel context.
func BenchmarkLazyDeadline(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Run("WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(parent, 5*time.Second)
			_ = ctx.Err()
			cancel()
		}
	})
	b.Run("lazy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx := withLazyTimeout(parent, 5*time.Second)
			_ = ctx.Err()
			ctx.release()
		}
	})
}
