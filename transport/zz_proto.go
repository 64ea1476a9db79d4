package transport

// PROTOTYPE ONLY (not committed): measures what an own path for
// requests with a body would save, through go:linkname to quic-go's
// unexported sendRequestHeader.

import (
	"context"
	"io"
	"net/http"
	"sync"
	_ "unsafe"

	"github.com/quic-go/quic-go/http3"
)

//go:linkname protoSendRequestHeader github.com/quic-go/quic-go/http3.(*RequestStream).sendRequestHeader
func protoSendRequestHeader(s *http3.RequestStream, req *http.Request) error

var protoBufs = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}

func (pc *PeerConn) roundTripBodyProto(req *http.Request) (*http.Response, bool, error) {
	select {
	case <-pc.Conn.HandshakeComplete():
	default:
		return nil, false, nil
	}
	ctx := req.Context()
	str, err := pc.h3.OpenRequestStream(ctx)
	if err != nil {
		req.Body.Close()
		return nil, true, ctxErrOr(ctx, err)
	}
	cancel := func() {
		str.CancelWrite(codeRequestCanceled)
		str.CancelRead(codeRequestCanceled)
	}
	stop := context.AfterFunc(ctx, cancel)
	if err := protoSendRequestHeader(str, req); err != nil {
		req.Body.Close()
		stop()
		cancel()
		return nil, true, ctxErrOr(ctx, err)
	}
	go func() {
		defer str.Close()
		defer req.Body.Close()
		bp := protoBufs.Get().(*[]byte)
		defer protoBufs.Put(bp)
		if _, err := io.CopyBuffer(str, req.Body, *bp); err != nil {
			str.CancelWrite(codeRequestCanceled)
		}
	}()
	resp, err := str.ReadResponse()
	if err != nil {
		stop()
		cancel()
		return nil, true, ctxErrOr(ctx, err)
	}
	resp.Request = req
	resp.Body = &watchedBody{ReadCloser: resp.Body, stop: stop}
	return resp, true, nil
}
