package transport

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// max1xx bounds the informational responses read before the final one,
// as quic-go's client does (http3.max1xxResponses).
const max1xx = 5

// codeRequestCanceled is HTTP/3's H3_REQUEST_CANCELLED, what quic-go's
// client resets a request stream with when the request's context ends.
const codeRequestCanceled = quic.StreamErrorCode(http3.ErrCodeRequestCanceled)

// bodyless reports whether req can take roundTripBodyless: no body to
// send, and none of the methods quic-go's RoundTrip treats specially
// (0-RTT GET/HEAD, CONNECT with its Extended CONNECT wait for SETTINGS).
//
// Requests with a body stay on quic-go's RoundTrip (two goroutines and
// an 8 KiB buffer per request) because quic-go v0.65's public API cannot
// frame them: RequestStream.SendRequestHeader refuses a request with a
// body (quic-go PR 5231, on purpose), a copy without one would be sent
// as "content-length: 0" for POST, PUT and PATCH (the Content-Length
// field is always derived from Body and ContentLength), and request
// trailers can only be written by the unexported sendRequestTrailer.
// TestRoundTripBodyFraming pins the framing; docs/benchmarks.md
// ("Requests with a body on the own path") has what an own path saves.
func bodyless(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case http3.MethodGet0RTT, http3.MethodHead0RTT, http.MethodConnect:
		return false
	}
	return true
}

// roundTripBodyless sends a request without a body as
// http3.ClientConn.RoundTrip does, without the goroutine RoundTrip
// starts for every request to watch its context until the response body
// ends (a goroutine start, two channels and two wake-ups per request:
// docs/benchmarks.md, "Client sidecar"). The context is watched by
// context.AfterFunc instead, until the response body is closed. The
// response's TLS field is left nil: the peer's identity is
// PeerConn.Peer, checked once for the connection. ok is false when the
// connection's handshake is not complete yet (a 0-RTT connection):
// RoundTrip then takes quic-go's path, which waits for it.
func (pc *PeerConn) roundTripBodyless(req *http.Request) (resp *http.Response, ok bool, err error) {
	select {
	case <-pc.Conn.HandshakeComplete():
	default:
		return nil, false, nil
	}
	ctx := req.Context()
	str, err := pc.h3.OpenRequestStream(ctx)
	if err != nil {
		return nil, true, ctxErrOr(ctx, err)
	}
	cancel := func() {
		str.CancelWrite(codeRequestCanceled)
		str.CancelRead(codeRequestCanceled)
	}
	stop := context.AfterFunc(ctx, cancel)
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		cancel()
		return nil, true, ctxErrOr(ctx, err)
	}
	if err := str.SendRequestHeader(req); err != nil {
		return fail(err)
	}
	// Nothing follows the HEADERS frame: the FIN. Its error is ignored,
	// as quic-go's RoundTrip does: a server that answered at once may
	// already have sent STOP_SENDING (it reads no body), which cancels
	// our side for writing, and its response is still to be read.
	_ = str.Close()
	trace := httptrace.ContextClientTrace(ctx)
	for n1xx := 0; ; {
		resp, err := str.ReadResponse()
		if err != nil {
			return fail(err)
		}
		// 101 is final, as in net/http (golang.org/issue/26161).
		if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
			resp.Request = req
			resp.Body = &watchedBody{ReadCloser: resp.Body, stop: stop, pc: pc}
			return resp, true, nil
		}
		if n1xx++; n1xx > max1xx {
			return fail(errors.New("http3: too many 1xx informational responses"))
		}
		if trace != nil && trace.Got1xxResponse != nil {
			// Its error is ignored, as quic-go's RoundTrip does.
			_ = trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header))
		}
		if resp.StatusCode == http.StatusContinue && trace != nil && trace.Got100Continue != nil {
			trace.Got100Continue()
		}
	}
}

// ctxErrOr is what http3.ClientConn.RoundTrip returns for a failed
// request: the context's error once it has ended, else err.
func ctxErrOr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// watchedBody is a response body whose request's context stops being
// watched when it is closed: a context that ends later must not reset a
// stream whose exchange is over. Until then the request counts as work
// on its connection (PeerConn.notFinished).
type watchedBody struct {
	io.ReadCloser
	stop   func() bool // idempotent (context.AfterFunc's)
	pc     *PeerConn
	closed atomic.Bool
}

func (b *watchedBody) Close() error {
	b.stop()
	if b.closed.CompareAndSwap(false, true) {
		defer b.pc.streamEnded()
	}
	return b.ReadCloser.Close()
}
