package transport_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport"
)

func TestRefused(t *testing.T) {
	tests := []struct {
		name          string
		err           error
		refused, dead bool
	}{
		{"nil", nil, false, false},
		{"peer shutting down", &quic.ApplicationError{Remote: true, ErrorCode: transport.ConnCodeShutdown}, true, false},
		{"we shut down", &quic.ApplicationError{Remote: false, ErrorCode: transport.ConnCodeShutdown}, false, false},
		{"H3_REQUEST_REJECTED", &quic.StreamError{ErrorCode: 0x10b, Remote: true}, true, false},
		{"stream reset by the app", &quic.StreamError{ErrorCode: transport.CodeReset, Remote: true}, false, false},
		{"stateless reset (peer restarted)", fmt.Errorf("http3: parsing frame failed: %w", &quic.StatelessResetError{}), true, true},
		{"tunnel stream never opened", fmt.Errorf("transport: opening stream: %w", transport.ErrStreamNotOpened), true, true},
		{"idle timeout: the peer stopped answering, may have processed it", &quic.IdleTimeoutError{}, false, true},
		{"other", errors.New("boom"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transport.Refused(tt.err); got != tt.refused {
				t.Fatalf("Refused(%v) = %v, want %v", tt.err, got, tt.refused)
			}
			if got := transport.ConnectionDead(tt.err); got != tt.dead {
				t.Fatalf("ConnectionDead(%v) = %v, want %v", tt.err, got, tt.dead)
			}
		})
	}
}

func TestHandshakeReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"our identity check", &identity.VerifyError{Reason: identity.ReasonWrongID, Err: errors.New("x")}, identity.ReasonWrongID},
		{"dial error carries its reason", &transport.DialError{Reason: transport.ReasonNotAccepted, Err: errors.New("x")}, transport.ReasonNotAccepted},
		{"peer sent a TLS alert", &quic.TransportError{Remote: true, ErrorCode: 0x12a}, transport.ReasonPeerRefused},
		{"our own TLS alert", &quic.TransportError{Remote: false, ErrorCode: 0x12a}, identity.ReasonOther},
		{"listener refused: overloaded or draining", &quic.TransportError{Remote: true, ErrorCode: quic.ConnectionRefused}, transport.ReasonRefused},
		{"handshake timeout", &quic.HandshakeTimeoutError{}, transport.ReasonTimeout},
		{"no answer within the dial timeout", &quic.IdleTimeoutError{}, transport.ReasonTimeout},
		{"dial deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), transport.ReasonTimeout},
		{"other", errors.New("boom"), identity.ReasonOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transport.HandshakeReason(tt.err); got != tt.want {
				t.Fatalf("HandshakeReason(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}
