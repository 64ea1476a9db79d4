package transport

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// meshError is the QUIC side of the code mapping: every stream code comes
// out as the mesh code of the same value, with the QUIC error still in the
// chain and its text unchanged.
func TestMeshError(t *testing.T) {
	for _, code := range []meshcode.Code{meshcode.NoError, meshcode.Reset, meshcode.UnknownTarget, meshcode.ConnectFailed, meshcode.BadHeader, meshcode.Overloaded, meshcode.ShuttingDown} {
		qerr := &quic.StreamError{StreamID: 4, ErrorCode: quic.StreamErrorCode(code), Remote: true}
		got := meshError(fmt.Errorf("read: %w", qerr))
		se, ok := errors.AsType[*meshcode.StreamError](got)
		if !ok || se.Code != code || !se.Remote {
			t.Errorf("code %#x: meshError = %v, want a remote StreamError with the same code", uint64(code), got)
		}
		if _, ok := errors.AsType[*quic.StreamError](got); !ok || got.Error() != "read: "+qerr.Error() {
			t.Errorf("code %#x: the QUIC error is lost or its text changed: %q", uint64(code), got)
		}
	}
	tests := []struct {
		name string
		err  error
		kind error
	}{
		{"connection closed by the peer", &quic.ApplicationError{Remote: true, ErrorCode: ConnCodeShutdown}, meshcode.ErrConnClosed},
		{"idle timeout", &quic.IdleTimeoutError{}, meshcode.ErrIdleTimeout},
		{"idle timeout: the peer is dead", &quic.IdleTimeoutError{}, meshcode.ErrConnDead},
		{"stateless reset: the peer lost its state", &quic.StatelessResetError{}, meshcode.ErrConnDead},
	}
	for _, tt := range tests {
		if got := meshError(tt.err); !errors.Is(got, tt.kind) || got.Error() != tt.err.Error() {
			t.Errorf("%s: meshError = %v, want it marked %v with the same text", tt.name, got, tt.kind)
		}
	}
	if meshError(io.EOF) != io.EOF || meshError(nil) != nil {
		t.Error("meshError must return io.EOF and nil unchanged: readers compare with ==")
	}
}
