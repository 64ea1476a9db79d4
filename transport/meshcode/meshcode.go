// Package meshcode is the transport-neutral vocabulary of how mesh streams
// and connections end: the mesh error codes (part of the wire protocol,
// listed in docs/design.md) and the errors a transport reports them with.
// Both the proxy and every transport import it; it imports no transport,
// so the proxy can tell a reset tunnel or a request the peer never
// processed without knowing which transport carried it.
package meshcode

import (
	"errors"
	"fmt"
)

// Code ends a tunnel stream: the reason one side reset it. A transport
// carries it as its own stream error code (QUIC: the application error
// code of RESET_STREAM and STOP_SENDING, same value).
type Code uint64

// Stream codes. The values are the wire protocol; never renumber them.
const (
	NoError       Code = 0x0
	Reset         Code = 0x51c1 // the TCP peer reset its connection
	UnknownTarget Code = 0x51c2 // no local route for the tunnel target
	ConnectFailed Code = 0x51c3 // the local app refused or timed out
	BadHeader     Code = 0x51c4 // malformed tunnel header
	Overloaded    Code = 0x51c5 // the sidecar sheds load
	ShuttingDown  Code = 0x51c6 // the sidecar is draining
	Forbidden     Code = 0x51c7 // the caller is not authorized for the target
)

// ConnCode ends a whole peer connection (QUIC: the application error code
// of CONNECTION_CLOSE, same value).
type ConnCode uint64

// Connection codes. The values are the wire protocol.
const (
	ConnShutdown   ConnCode = 0x51d0 // the sidecar is shutting down
	ConnIdentity   ConnCode = 0x51d1 // retired: the peer certificate it was authenticated with expired
	ConnPoolClosed ConnCode = 0x51d2 // the dialing pool closed
	// ConnUnresponsive: the dialing side's liveness watch heard nothing
	// from the peer for its timeout while work was outstanding (the peer
	// rarely receives it: it is usually gone or cut off).
	ConnUnresponsive ConnCode = 0x51d3
)

// A StreamError is a tunnel stream that was reset, by the peer (Remote)
// or by us, with Code. Its text is that of the transport's own error,
// which it wraps.
type StreamError struct {
	Code   Code
	Remote bool
	Err    error
}

func (e *StreamError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	side := "local"
	if e.Remote {
		side = "remote"
	}
	return fmt.Sprintf("stream reset (%s) with mesh code %#x", side, uint64(e.Code))
}

func (e *StreamError) Unwrap() error { return e.Err }

// Kinds of failure a transport marks its errors with (see Mark); test
// them with errors.Is.
var (
	// ErrConnClosed: the connection the stream or request used was
	// closed by either side's application (a connection code, or the
	// HTTP layer closing it).
	ErrConnClosed = errors.New("mesh connection closed")
	// ErrIdleTimeout: the connection timed out for lack of traffic: the
	// idle timeout, or the dialing side's liveness watch (the peer sent
	// nothing while work was outstanding). The peer may have processed
	// what was in flight.
	ErrIdleTimeout = errors.New("mesh connection idle timeout")
	// ErrNotProcessed: the peer provably did not process the request or
	// tunnel (it was draining or closing, rejected the stream, or the
	// stream was never opened), so sending it again elsewhere is safe.
	ErrNotProcessed = errors.New("not processed by the peer")
	// ErrConnDead: the connection is gone for good (the peer lost its
	// state, or a stream could not be opened on it), even if the
	// transport has not noticed yet; it must not be used again.
	ErrConnDead = errors.New("mesh connection dead")
	// ErrPeerUnavailable: the peer cannot be reached: the dial failed
	// just now, or failed (or the peer announced a drain) recently and
	// the dialer is in back-off.
	ErrPeerUnavailable = errors.New("transport: peer unavailable")
	// ErrPeerRestarting: the peer could not be reached, but it announced
	// a drain recently and has not answered since: it is restarting (a
	// rolling restart), not cut off. Its failure says nothing about the
	// path, so a fallback to another transport is no remedy.
	ErrPeerRestarting = errors.New("transport: peer restarting after a drain")
)

// Mark returns err, with err's text, so that errors.Is also matches each
// of kinds; errors.As still finds whatever err wraps. A nil err or no
// kinds return err unchanged.
func Mark(err error, kinds ...error) error {
	if err == nil || len(kinds) == 0 {
		return err
	}
	return &marked{err: err, kinds: kinds}
}

type marked struct {
	err   error
	kinds []error
}

func (m *marked) Error() string { return m.err.Error() }

func (m *marked) Unwrap() []error { return append([]error{m.err}, m.kinds...) }
