package h2tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/transport/meshcode"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// Stream is the outbound end of a tunnel: writes go into the CONNECT
// request body (CloseWrite is its END_STREAM), reads come from the framed
// response body.
type Stream struct {
	pc     *PeerConn
	pw     *io.PipeWriter
	cancel context.CancelFunc // resets the HTTP/2 stream (RST_STREAM CANCEL) unless it ended

	ready chan struct{} // closed once resp or err is set
	resp  *http.Response
	err   error
	fr    *frameReader

	reset    atomic.Pointer[meshcode.StreamError] // our own Reset
	finished atomic.Bool                          // the response direction ended cleanly (FIN)
	once     sync.Once
}

// errBodyDone closes the request body pipe once x/net/http2 is done with
// the body: the peer ended or reset the stream.
var errBodyDone = errors.New("h2tcp: the peer stopped reading the tunnel")

// reqBody is the CONNECT request body: the tunnel header, then what the
// app writes.
type reqBody struct {
	hdr []byte
	pr  *io.PipeReader
}

func (b *reqBody) Read(p []byte) (int, error) {
	if len(b.hdr) > 0 {
		n := copy(p, b.hdr)
		b.hdr = b.hdr[n:]
		return n, nil
	}
	return b.pr.Read(p)
}

func (b *reqBody) Close() error {
	b.pr.CloseWithError(errBodyDone)
	return nil
}

// OpenTunnel opens a CONNECT stream to the peer carrying a tunnel to
// target. It returns once the request headers are written, without
// waiting for the peer: like the QUIC transport, the app's first bytes
// follow the header at once. Errors are marked as RoundTrip's are.
func (pc *PeerConn) OpenTunnel(ctx context.Context, target string) (*Stream, error) {
	return pc.OpenTunnelHeader(ctx, tunnel.Header{Target: target})
}

// OpenTunnelHeader is OpenTunnel with a whole tunnel header (its
// extensions: the original destination port of the transparent path).
func (pc *PeerConn) OpenTunnelHeader(ctx context.Context, h tunnel.Header) (*Stream, error) {
	target := h.Target
	hdr, err := h.AppendTo(make([]byte, 0, 64))
	if err != nil {
		return nil, fmt.Errorf("h2tcp: tunnel to %s: %w", target, err)
	}
	pr, pw := io.Pipe()
	// The stream lives beyond ctx, which bounds only the opening.
	sctx, cancel := context.WithCancel(context.Background())
	s := &Stream{pc: pc, pw: pw, cancel: cancel, ready: make(chan struct{})}
	wrote := make(chan struct{})
	var wroteOnce sync.Once
	trace := &httptrace.ClientTrace{WroteHeaders: func() { wroteOnce.Do(func() { close(wrote) }) }}
	req := (&http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: TunnelAuthority},
		Host:          TunnelAuthority,
		Header:        http.Header{},
		Body:          &reqBody{hdr: hdr, pr: pr},
		ContentLength: -1,
	}).WithContext(httptrace.WithClientTrace(sctx, trace))
	go s.roundTrip(req)
	select {
	case <-wrote:
		return s, nil
	case <-s.ready:
		if s.err != nil {
			cancel()
			return nil, s.err
		}
		return s, nil
	case <-ctx.Done():
		s.Reset(meshcode.Reset)
		return nil, fmt.Errorf("h2tcp: opening tunnel to %s: %w", pc.addr, ctx.Err())
	}
}

func (s *Stream) roundTrip(req *http.Request) {
	resp, err := s.pc.cc.RoundTrip(req)
	switch {
	case err != nil:
		s.err = s.pc.requestError(fmt.Errorf("h2tcp: tunnel stream to %s: %w", s.pc.addr, err))
		s.pw.CloseWithError(s.err)
	case resp.StatusCode != http.StatusOK:
		resp.Body.Close()
		s.err = &meshcode.StreamError{Code: meshcode.Reset, Remote: true, Err: fmt.Errorf("h2tcp: tunnel refused by %s with status %d", s.pc.addr, resp.StatusCode)}
		s.pw.CloseWithError(s.err)
	default:
		s.resp = resp
		s.fr = newFrameReader(resp.Body)
	}
	close(s.ready)
}

func (s *Stream) Read(p []byte) (int, error) {
	<-s.ready
	if s.err != nil {
		return 0, s.err
	}
	if r := s.reset.Load(); r != nil {
		return 0, r
	}
	n, err := s.fr.Read(p)
	if err != nil {
		err = s.readError(err)
	}
	return n, err
}

// readError maps the end of the response direction: FIN is io.EOF (the
// stream itself ends when the peer has read our FIN too); a RESET frame,
// an RST_STREAM or a body cut short is a reset by the peer, which aborts
// our direction too, as a QUIC reset does.
func (s *Stream) readError(err error) error {
	if r := s.reset.Load(); r != nil {
		return r
	}
	switch se, isH2 := errors.AsType[http2.StreamError](err); {
	case err == io.EOF:
		s.finished.Store(true)
		go s.drain()
		return io.EOF
	case errors.Is(err, errMalformedFrame):
		s.Reset(meshcode.BadHeader)
		return &meshcode.StreamError{Code: meshcode.BadHeader, Err: fmt.Errorf("h2tcp: tunnel from %s: %w", s.pc.addr, err)}
	case isH2:
		s.abort()
		return &meshcode.StreamError{Code: meshcode.Reset, Remote: true, Err: fmt.Errorf("h2tcp: tunnel reset by %s (%v): %w", s.pc.addr, se.Code, err)}
	case errors.Is(err, errTruncated):
		s.abort()
		return &meshcode.StreamError{Code: meshcode.Reset, Remote: true, Err: fmt.Errorf("h2tcp: tunnel from %s: %w", s.pc.addr, err)}
	}
	if _, ok := errors.AsType[*meshcode.StreamError](err); ok {
		s.abort()
		return err
	}
	s.abort()
	return s.pc.requestError(fmt.Errorf("h2tcp: reading tunnel from %s: %w", s.pc.addr, err))
}

// drain waits, after the peer's FIN, for the HTTP/2 stream to end (after
// our own END_STREAM, or a reset) and releases it.
func (s *Stream) drain() {
	io.Copy(io.Discard, s.resp.Body)
	s.resp.Body.Close()
	s.cancel()
}

// abort releases the stream after a reset in either direction.
func (s *Stream) abort() {
	s.once.Do(func() {
		s.cancel()
		s.pw.CloseWithError(errBodyDone)
		select {
		case <-s.ready:
			if s.resp != nil {
				s.resp.Body.Close()
			}
		default:
			// The response has not arrived: cancelling the request
			// releases it.
		}
	})
}

func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.pw.Write(p)
	if err != nil {
		err = s.writeError(err)
	}
	return n, err
}

func (s *Stream) writeError(err error) error {
	if r := s.reset.Load(); r != nil {
		return r
	}
	if se, ok := errors.AsType[*meshcode.StreamError](err); ok {
		return se
	}
	if errors.Is(err, errBodyDone) || errors.Is(err, io.ErrClosedPipe) {
		// The peer ended the stream: after its FIN it closed its side
		// (STOP_SENDING with no error on QUIC), otherwise it reset it.
		code := meshcode.Reset
		if s.finished.Load() {
			code = meshcode.NoError
		}
		return &meshcode.StreamError{Code: code, Remote: true, Err: fmt.Errorf("h2tcp: tunnel to %s: %w", s.pc.addr, errBodyDone)}
	}
	return s.pc.requestError(fmt.Errorf("h2tcp: writing tunnel to %s: %w", s.pc.addr, err))
}

// CloseWrite ends our direction: END_STREAM after what was written.
func (s *Stream) CloseWrite() error {
	if r := s.reset.Load(); r != nil {
		return r
	}
	return s.pw.Close()
}

// Reset aborts both directions: RST_STREAM (CANCEL on the wire; the
// inbound side reads any reset from us as meshcode.Reset).
func (s *Stream) Reset(code meshcode.Code) {
	s.reset.CompareAndSwap(nil, &meshcode.StreamError{Code: code})
	s.abort()
}
