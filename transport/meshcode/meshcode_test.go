package meshcode

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

type inner struct{ msg string }

func (e *inner) Error() string { return e.msg }

func TestMark(t *testing.T) {
	base := fmt.Errorf("opening stream: %w", &inner{"boom"})
	tests := []struct {
		name  string
		err   error
		kinds []error
		is    []error // errors.Is must match each
		isNot []error
	}{
		{"no kinds", base, nil, []error{base}, []error{ErrNotProcessed}},
		{"one kind", base, []error{ErrConnClosed}, []error{base, ErrConnClosed}, []error{ErrNotProcessed, ErrConnDead}},
		{"two kinds", base, []error{ErrNotProcessed, ErrConnDead}, []error{base, ErrNotProcessed, ErrConnDead}, []error{ErrConnClosed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Mark(tt.err, tt.kinds...)
			if got.Error() != tt.err.Error() {
				t.Fatalf("Mark changed the text: %q, want %q", got, tt.err)
			}
			for _, k := range tt.is {
				if !errors.Is(got, k) {
					t.Errorf("errors.Is(%v, %v) = false", got, k)
				}
			}
			for _, k := range tt.isNot {
				if errors.Is(got, k) {
					t.Errorf("errors.Is(%v, %v) = true", got, k)
				}
			}
			if in, ok := errors.AsType[*inner](got); !ok || in.msg != "boom" {
				t.Errorf("the wrapped error is no longer found with errors.As: %v", got)
			}
		})
	}
	if Mark(nil, ErrConnDead) != nil {
		t.Error("Mark(nil) is not nil")
	}
	if Mark(io.EOF) != io.EOF {
		t.Error("Mark without kinds does not return err itself")
	}
}

func TestStreamError(t *testing.T) {
	wrapped := errors.New("stream 4 canceled by remote with error code 20929")
	e := &StreamError{Code: Reset, Remote: true, Err: wrapped}
	if e.Error() != wrapped.Error() || !errors.Is(e, wrapped) {
		t.Fatalf("StreamError does not present the transport's error: %q", e)
	}
	bare := &StreamError{Code: UnknownTarget}
	if got, want := bare.Error(), "stream reset (local) with mesh code 0x51c2"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}
