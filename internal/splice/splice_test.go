package splice

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

func TestErrClass(t *testing.T) {
	reset := func(c meshcode.Code) error {
		return fmt.Errorf("reading: %w", &meshcode.StreamError{Code: c, Remote: true, Err: errors.New("reset")})
	}
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{reset(meshcode.Reset), "peer_reset"},
		{reset(meshcode.UnknownTarget), "unknown_target"},
		{reset(meshcode.ConnectFailed), "connect_failed"},
		{reset(meshcode.ShuttingDown), "shutting_down"},
		{reset(meshcode.Forbidden), "forbidden"},
		{reset(meshcode.BadHeader), "stream_reset"},
		{reset(0x10c), "stream_reset"},
		{meshcode.Mark(errors.New("Application error 0x51d0 (remote)"), meshcode.ErrConnClosed), "connection_closed"},
		{meshcode.Mark(errors.New("timeout: no recent network activity"), meshcode.ErrIdleTimeout), "idle_timeout"},
		{fmt.Errorf("write: %w", net.ErrClosed), "closed"},
		{errors.New("connection reset by peer"), "io_error"},
	}
	for _, tt := range tests {
		if got := ErrClass(tt.err); got != tt.want {
			t.Errorf("ErrClass(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
