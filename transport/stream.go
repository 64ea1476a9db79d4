package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// Stream is a tunnel stream: the raw byte stream of one tunnelled TCP
// connection, its header already written (outbound) or read (inbound).
// Its errors are mesh errors (meshError): a reset is a
// *meshcode.StreamError, whatever the QUIC error behind it.
type Stream struct {
	str *quic.Stream
	hdr tunnel.Header
	// pc is the connection of a stream we opened, whose work count the
	// stream holds until both directions have ended (ended).
	pc    *PeerConn
	ended atomic.Uint32 // streamReadEnded | streamWriteEnded
}

// The directions of a Stream that have ended.
const (
	streamReadEnded uint32 = 1 << iota
	streamWriteEnded
	streamEnded = streamReadEnded | streamWriteEnded
)

// done records that the directions in dirs have ended; when both have, a
// stream we opened stops counting as work on its connection.
func (s *Stream) done(dirs uint32) {
	if s.pc == nil {
		return
	}
	if old := s.ended.Or(dirs); old != streamEnded && old|dirs == streamEnded {
		s.pc.streamEnded()
	}
}

// DestPort is the original destination port the tunnel header carried
// (tunnel.ExtDestPort), ok false if none.
func (s *Stream) DestPort() (port uint16, ok bool) { return s.hdr.DestPort() }

// Read reads the peer's bytes; an error (io.EOF included) other than a
// deadline's ends the receive direction.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.str.Read(p)
	if err != nil && !timeout(err) {
		s.done(streamReadEnded)
	}
	return n, meshError(err)
}

// Write sends bytes to the peer; an error other than a deadline's ends
// the send direction.
func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.str.Write(p)
	if err != nil && !timeout(err) {
		s.done(streamWriteEnded)
	}
	return n, meshError(err)
}

// timeout reports whether err is a deadline's.
func timeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// CloseWrite ends the send direction after what was written (FIN).
func (s *Stream) CloseWrite() error {
	err := s.str.Close()
	s.done(streamWriteEnded)
	return meshError(err)
}

// Close ends our side as closing a TCP socket does: FIN after what was
// written, and the peer is told to stop sending what nobody will read
// (STOP_SENDING with meshcode.NoError).
func (s *Stream) Close() error {
	s.str.CancelRead(CodeNoError)
	err := s.str.Close()
	s.done(streamEnded)
	return meshError(err)
}

// Reset aborts both directions with code.
func (s *Stream) Reset(code meshcode.Code) {
	s.str.CancelWrite(quic.StreamErrorCode(code))
	s.str.CancelRead(quic.StreamErrorCode(code))
	s.done(streamEnded)
}

// Context ends when the stream is finished or its connection closes.
func (s *Stream) Context() context.Context { return s.str.Context() }

func (s *Stream) SetDeadline(t time.Time) error      { return s.str.SetDeadline(t) }
func (s *Stream) SetReadDeadline(t time.Time) error  { return s.str.SetReadDeadline(t) }
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.str.SetWriteDeadline(t) }

// meshError maps a QUIC error to the mesh's neutral terms, keeping its
// text and the QUIC error in its chain: a stream reset becomes a
// *meshcode.StreamError with the code of the same value, a connection
// closed by an application is marked meshcode.ErrConnClosed, an idle
// timeout (the peer stopped answering: failure detection) both
// meshcode.ErrIdleTimeout and meshcode.ErrConnDead, a stateless reset
// (the peer lost its state) meshcode.ErrConnDead. io.EOF and nil are
// returned as they are.
func meshError(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if se, ok := errors.AsType[*quic.StreamError](err); ok {
		return &meshcode.StreamError{Code: meshcode.Code(se.ErrorCode), Remote: se.Remote, Err: err}
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok {
		if declaredDead(ae) {
			return meshcode.Mark(err, meshcode.ErrIdleTimeout, meshcode.ErrConnDead)
		}
		return meshcode.Mark(err, meshcode.ErrConnClosed)
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return meshcode.Mark(err, meshcode.ErrIdleTimeout, meshcode.ErrConnDead)
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return meshcode.Mark(err, meshcode.ErrConnDead)
	}
	return err
}

// requestError marks an error of an HTTP request or a tunnel open with
// what the proxy's retry policy needs to know: meshcode.ErrNotProcessed
// (refused), meshcode.ErrConnDead (connectionDead) and, for a peer that
// stopped answering, meshcode.ErrIdleTimeout.
func requestError(err error) error {
	var kinds []error
	if refused(err) {
		kinds = append(kinds, meshcode.ErrNotProcessed)
	}
	if connectionDead(err) {
		kinds = append(kinds, meshcode.ErrConnDead)
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		kinds = append(kinds, meshcode.ErrIdleTimeout)
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && declaredDead(ae) {
		kinds = append(kinds, meshcode.ErrIdleTimeout)
	}
	return meshcode.Mark(err, kinds...)
}

// declaredDead reports whether ae is our liveness watch closing the
// connection: the peer stopped answering, as for an idle timeout.
func declaredDead(ae *quic.ApplicationError) bool {
	return !ae.Remote && ae.ErrorCode == ConnCodeUnresponsive
}

// h3RequestRejected is HTTP/3's H3_REQUEST_REJECTED: the server did not
// process the request.
const h3RequestRejected = 0x10b

// refused reports whether err says the peer did not process a request at
// all, so that sending it again (on a fresh connection, or elsewhere) is
// safe: it was closing, it rejected the stream, the stream could not even
// be opened (ErrStreamNotOpened), or the connection turned out dead: a
// stateless reset means the peer has no state for it, typically because
// it restarted. (A request already in flight when a peer crashed may have
// been processed before the crash; callers retry only body-less requests,
// once.)
func refused(err error) bool {
	var sr *quic.StatelessResetError
	if errors.As(err, &sr) || errors.Is(err, ErrStreamNotOpened) {
		return true
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && !ae.Remote {
		return false
	}
	if errors.As(err, &ae) && (ae.ErrorCode == ConnCodeShutdown || ae.ErrorCode == 0x100 /* H3_NO_ERROR */) {
		return true
	}
	var se *quic.StreamError
	return errors.As(err, &se) && (se.ErrorCode == h3RequestRejected || se.ErrorCode == CodeShuttingDown)
}

// connectionDead reports whether err shows that the connection it came
// from is gone for good (a stateless reset, a stream that could not be
// opened because the connection had closed, or an idle timeout: the peer
// stopped answering, see Limits.IdleTimeout), even if the connection's
// context has not ended yet: the HTTP/3 layer can report a stateless reset
// a moment before the QUIC connection is torn down. Such a connection must
// not be handed out again. Unlike a stateless reset, an idle timeout does
// not prove the request unprocessed: a frozen or partitioned peer may
// have served it.
func connectionDead(err error) bool {
	var sr *quic.StatelessResetError
	var it *quic.IdleTimeoutError
	var ae *quic.ApplicationError
	return errors.As(err, &sr) || errors.As(err, &it) || errors.Is(err, ErrStreamNotOpened) || errors.As(err, &ae) && declaredDead(ae)
}
