package h2tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// ServerStream is the inbound end of a tunnel, its header already read:
// reads come from the CONNECT request body (END_STREAM is FIN, RST_STREAM
// a reset), writes go out as DATA frames of the framed response body
// (frame.go), CloseWrite as a FIN frame, Reset as a RESET frame with the
// code followed by RST_STREAM.
type ServerStream struct {
	hdr  tunnel.Header // what the stream's tunnel header carried
	w    http.ResponseWriter
	rc   *http.ResponseController
	body io.ReadCloser

	ctx    context.Context
	cancel context.CancelFunc

	// life guards every use of w and rc: x/net/http2 panics on a
	// ResponseWriter used after its handler returned, and the splice
	// goroutines may still write when the connection ends under them.
	life     sync.RWMutex
	finished bool

	wmu         sync.Mutex
	buf         []byte
	writeClosed bool

	// Reads go through a pump goroutine so that a read deadline can end a
	// blocked Read and be reset afterwards: x/net/http2's own read
	// deadline closes the request body for good, and its write deadline
	// resets the stream, while net/http's server (HTTP carried by a
	// tunnel) sets a deadline in the past to interrupt a read and then
	// goes on reading.
	chunks    chan chunk
	ack       chan struct{}
	pending   []byte // unread rest of the last chunk
	pumpOnce  sync.Once
	rdl, wdl  atomic.Pointer[time.Time]
	rdlChange chan struct{}

	readDone  atomic.Bool
	writeDone atomic.Bool
	resetCode atomic.Pointer[meshcode.Code]
	changed   chan struct{} // a direction finished or the stream was reset
}

// DestPort is the original destination port the tunnel header carried
// (tunnel.ExtDestPort), ok false if none: the same as the QUIC
// transport's streams, so the inbound side delivers by port on both.
func (s *ServerStream) DestPort() (port uint16, ok bool) { return s.hdr.DestPort() }

func newServerStream(w http.ResponseWriter, r *http.Request) *ServerStream {
	ctx, cancel := context.WithCancel(r.Context())
	return &ServerStream{w: w, rc: http.NewResponseController(w), body: r.Body, ctx: ctx, cancel: cancel, changed: make(chan struct{}, 1),
		chunks: make(chan chunk), ack: make(chan struct{}), rdlChange: make(chan struct{}, 1)}
}

type chunk struct {
	b   []byte
	err error
}

// pump reads the request body and hands each chunk to Read, waiting for
// it to be consumed before reusing the buffer.
func (s *ServerStream) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.body.Read(buf)
		select {
		case s.chunks <- chunk{buf[:n], err}:
		case <-s.ctx.Done():
			return
		}
		if err != nil {
			return
		}
		select {
		case <-s.ack:
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *ServerStream) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// wait blocks the handler until both directions have finished, the stream
// was reset or the connection ended. A reset aborts the HTTP/2 stream
// (RST_STREAM) by the only means net/http gives a handler.
func (s *ServerStream) wait() {
	defer func() {
		s.life.Lock()
		s.finished = true
		s.life.Unlock()
		s.cancel()
	}()
	for {
		if s.resetCode.Load() != nil {
			panic(http.ErrAbortHandler)
		}
		if s.readDone.Load() && s.writeDone.Load() {
			return
		}
		select {
		case <-s.changed:
		case <-s.ctx.Done():
			if s.resetCode.Load() != nil {
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

func (s *ServerStream) Read(p []byte) (int, error) {
	if c := s.resetCode.Load(); c != nil {
		return 0, &meshcode.StreamError{Code: *c}
	}
	if len(s.pending) > 0 {
		return s.consume(p), nil
	}
	s.pumpOnce.Do(func() { go s.pump() })
	for {
		var timeout <-chan time.Time
		if d := s.rdl.Load(); d != nil && !d.IsZero() {
			wait := time.Until(*d)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case c := <-s.chunks:
			if c.err != nil {
				return 0, s.readError(c.err)
			}
			s.pending = c.b
			return s.consume(p), nil
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		case <-s.rdlChange:
		case <-s.ctx.Done():
			if c := s.resetCode.Load(); c != nil {
				return 0, &meshcode.StreamError{Code: *c}
			}
			return 0, s.readError(context.Cause(s.ctx))
		}
	}
}

// consume copies from the pending chunk and lets the pump go on once it
// is used up.
func (s *ServerStream) consume(p []byte) int {
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		select {
		case s.ack <- struct{}{}:
		case <-s.ctx.Done():
		}
	}
	return n
}

func (s *ServerStream) readError(err error) error {
	if c := s.resetCode.Load(); c != nil {
		return &meshcode.StreamError{Code: *c}
	}
	if err == io.EOF {
		s.readDone.Store(true)
		s.notify()
		return io.EOF
	}
	if isTimeout(err) {
		return err
	}
	// The peer reset its direction (RST_STREAM) or the connection went
	// away: for a tunnel both are a reset by the peer.
	s.readDone.Store(true)
	s.notify()
	return &meshcode.StreamError{Code: meshcode.Reset, Remote: true, Err: fmt.Errorf("h2tcp: tunnel reset by the peer: %w", err)}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// errFinished: the stream's handler has returned.
var errFinished = errors.New("h2tcp: tunnel stream finished")

func (s *ServerStream) finishedError() error {
	code := meshcode.Reset
	if c := s.resetCode.Load(); c != nil {
		code = *c
	}
	return &meshcode.StreamError{Code: code, Err: errFinished}
}

func (s *ServerStream) Write(p []byte) (int, error) {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.finished {
		return 0, s.finishedError()
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if c := s.resetCode.Load(); c != nil {
		return 0, &meshcode.StreamError{Code: *c}
	}
	if s.writeClosed {
		return 0, errors.New("h2tcp: write after CloseWrite")
	}
	if d := s.wdl.Load(); d != nil && !d.IsZero() && !time.Now().Before(*d) {
		return 0, os.ErrDeadlineExceeded
	}
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFrameData)]
		s.buf = appendFrameHeader(s.buf[:0], frameData, uint64(len(chunk)))
		if _, err := s.w.Write(s.buf); err != nil {
			return written, s.writeError(err)
		}
		if _, err := s.w.Write(chunk); err != nil {
			return written, s.writeError(err)
		}
		if err := s.rc.Flush(); err != nil {
			return written, s.writeError(err)
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

func (s *ServerStream) writeError(err error) error {
	if c := s.resetCode.Load(); c != nil {
		return &meshcode.StreamError{Code: *c}
	}
	if isTimeout(err) {
		return err
	}
	return &meshcode.StreamError{Code: meshcode.Reset, Remote: true, Err: fmt.Errorf("h2tcp: tunnel reset by the peer: %w", err)}
}

// CloseWrite ends our direction after what was written (a FIN frame);
// the peer may go on sending.
func (s *ServerStream) CloseWrite() error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.finished {
		return s.finishedError()
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.writeClosed {
		return nil
	}
	s.writeClosed = true
	defer func() { s.writeDone.Store(true); s.notify() }()
	if c := s.resetCode.Load(); c != nil {
		return &meshcode.StreamError{Code: *c}
	}
	if _, err := s.w.Write(appendFrameHeader(nil, frameFIN, 0)); err != nil {
		return s.writeError(err)
	}
	if err := s.rc.Flush(); err != nil {
		return s.writeError(err)
	}
	return nil
}

// Close ends our direction and stops reading, as closing a TCP socket
// does: the handler returns, and x/net/http2 tells the peer to stop
// sending (RST_STREAM NO_ERROR after our complete response).
func (s *ServerStream) Close() error {
	err := s.CloseWrite()
	s.readDone.Store(true)
	s.notify()
	return err
}

// Reset aborts both directions with code: a RESET frame carries the code
// (if no write is blocked on flow control), then RST_STREAM.
func (s *ServerStream) Reset(code meshcode.Code) {
	if !s.resetCode.CompareAndSwap(nil, &code) {
		return
	}
	defer s.notify()
	s.life.RLock()
	defer s.life.RUnlock()
	if s.finished {
		return
	}
	if s.wmu.TryLock() {
		if !s.writeClosed {
			s.writeClosed = true
			if _, err := s.w.Write(appendFrameHeader(nil, frameReset, uint64(code))); err == nil {
				s.rc.Flush()
			}
		}
		s.wmu.Unlock()
	}
	// A write blocked on flow control ends when x/net/http2's write
	// deadline resets the stream; a blocked Read ends with the stream's
	// context, cancelled here.
	s.rc.SetWriteDeadline(time.Now())
	s.cancel()
}

// Context ends when the stream is finished or its connection closes.
func (s *ServerStream) Context() context.Context { return s.ctx }

func (s *ServerStream) SetDeadline(t time.Time) error {
	return errors.Join(s.SetReadDeadline(t), s.SetWriteDeadline(t))
}
func (s *ServerStream) SetReadDeadline(t time.Time) error {
	s.rdl.Store(&t)
	select {
	case s.rdlChange <- struct{}{}:
	default:
	}
	return nil
}

// SetWriteDeadline bounds Write calls started after the deadline: they
// fail with a timeout. A write already blocked on HTTP/2 flow control is
// not interrupted (x/net/http2's only means is resetting the stream); the
// PING health check ends it if the peer is gone.
func (s *ServerStream) SetWriteDeadline(t time.Time) error {
	s.wdl.Store(&t)
	return nil
}
