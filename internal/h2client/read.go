package h2client

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// readLoop reads the connection's frames until it breaks.
func (cc *conn) readLoop() {
	defer close(cc.done)
	var err error
	for {
		var f http2.Frame
		f, err = cc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.resetByUs(se.StreamID, se.Code, se.Error())
				continue
			}
			break
		}
		cc.framesRead.Add(1)
		if err = cc.handle(f); err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("closed by the app: %w", err)
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) && cc.Err() == nil {
		cc.write(func() error { return cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil) })
	}
	cc.fail(err)
}

// protocolError is a connection error of the app's making.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", http2.ConnectionError(http2.ErrCodeProtocol), fmt.Sprintf(format, args...))
}

func (cc *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		return cc.onHeaderFragment(f.StreamID, f.HeaderBlockFragment(), true, f.StreamEnded(), f.HeadersEnded())
	case *http2.ContinuationFrame:
		return cc.onHeaderFragment(f.StreamID, f.HeaderBlockFragment(), false, false, f.HeadersEnded())
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := cc.applySettings(f); err != nil {
			return err
		}
		return cc.write(cc.fr.WriteSettingsAck)
	case *http2.PingFrame:
		if f.IsAck() {
			cc.pingOut.Store(false)
			return nil
		}
		return cc.write(func() error { return cc.fr.WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return cc.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		cc.onReset(f)
		return nil
	case *http2.GoAwayFrame:
		cc.onGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return protocolError("PUSH_PROMISE, push disabled")
	}
	return nil // PRIORITY, unknown frame types
}

// lookup returns the open stream id, or nil; a stream id never opened
// is a protocol error. Under mu.
func (cc *conn) lookup(id uint32) (*stream, error) {
	if s := cc.streams[id]; s != nil {
		return s, nil
	}
	if id%2 == 0 || id >= cc.nextID {
		return nil, protocolError("frame on stream %d, never opened", id)
	}
	return nil, nil
}

func (cc *conn) applySettings(f *http2.SettingsFrame) error {
	var tableSize uint32
	var setTable bool
	cc.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxFrameSize:
			cc.peerFrameSize = st.Val
		case http2.SettingMaxConcurrentStreams:
			cc.maxConcurrent = st.Val
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - int64(cc.peerWindow)
			for _, s := range cc.streams {
				s.sendWindow += delta
				if s.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			cc.peerWindow = int32(st.Val)
		case http2.SettingHeaderTableSize:
			tableSize, setTable = st.Val, true
		}
		return nil
	})
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if err == nil && setTable {
		cc.wmu.Lock()
		cc.henc.SetMaxDynamicTableSizeLimit(tableSize)
		cc.wmu.Unlock()
	}
	return err
}

func (cc *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		defer cc.mu.Unlock()
		if cc.sendWindow+inc > maxWindow {
			return fmt.Errorf("%w: connection window overflow", http2.ConnectionError(http2.ErrCodeFlowControl))
		}
		cc.sendWindow += inc
		cc.cond.Broadcast()
		return nil
	}
	s, err := cc.lookup(f.StreamID)
	if s == nil {
		cc.mu.Unlock()
		return err
	}
	if s.sendWindow+inc > maxWindow {
		cc.mu.Unlock()
		cc.abort(s, &StreamError{Code: http2.ErrCodeFlowControl, Reason: "stream window overflow"}, http2.ErrCodeFlowControl)
		return nil
	}
	s.sendWindow += inc
	cc.cond.Broadcast()
	cc.mu.Unlock()
	return nil
}

func (cc *conn) onReset(f *http2.RSTStreamFrame) {
	cc.mu.Lock()
	s := cc.streams[f.StreamID]
	if s == nil {
		cc.mu.Unlock()
		return
	}
	if f.ErrCode == http2.ErrCodeNo && s.ended {
		// The response is complete and the app wants no more of the
		// request body (RFC 9113 8.1).
		s.reqDone = true
		cc.finish(s)
		cc.cond.Broadcast()
		cc.mu.Unlock()
		s.closeReqBody()
		return
	}
	unprocessed := f.ErrCode == http2.ErrCodeRefusedStream && s.resp == nil
	cc.mu.Unlock()
	var err error = &StreamError{Code: f.ErrCode, Remote: true}
	if unprocessed {
		err = &retryable{reason: "REFUSED_STREAM", err: err}
	}
	cc.abort(s, err, noRST)
}

// noRST is a code abort takes as "do not send RST_STREAM": the stream
// was reset by the app or by GOAWAY.
const noRST = http2.ErrCode(1<<32 - 1)

func (cc *conn) onGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	cc.goAway = true
	var gone []*stream
	for id, s := range cc.streams {
		if id > f.LastStreamID {
			gone = append(gone, s)
		}
	}
	cc.mu.Unlock()
	for _, s := range gone {
		cc.abort(s, &retryable{reason: "GOAWAY", err: fmt.Errorf("h2client: the app sent GOAWAY (%v) before processing stream %d", f.ErrCode, s.id)}, noRST)
	}
	cc.mu.Lock()
	if len(cc.streams) == 0 && cc.reserved == 0 && cc.err == nil {
		cc.err = fmt.Errorf("h2client: connection to app %s: GOAWAY (%v)", cc.addr, f.ErrCode)
		cc.nc.Close()
	}
	cc.mu.Unlock()
}

// resetByUs resets stream id for an error in its frames.
func (cc *conn) resetByUs(id uint32, code http2.ErrCode, reason string) {
	cc.mu.Lock()
	s := cc.streams[id]
	cc.mu.Unlock()
	if s == nil {
		cc.write(func() error { return cc.fr.WriteRSTStream(id, code) })
		return
	}
	cc.abort(s, &StreamError{Code: code, Reason: reason}, code)
}

// hblock is the header block being decoded (readLoop only): the
// fields of a HEADERS frame and its CONTINUATIONs, checked as they are
// decoded.
type hblock struct {
	streamID   uint32
	ended      bool // END_STREAM on the HEADERS frame
	status     string
	fields     []hpack.HeaderField // regular fields; reused
	remain     int                 // header list bytes left
	wire       int                 // compressed bytes so far
	truncated  bool
	invalid    string
	sawRegular bool
}

// emit is the HPACK decoder's field callback.
func (cc *conn) emit(hf hpack.HeaderField) {
	b := &cc.hb
	if b.truncated || b.invalid != "" {
		return
	}
	if strings.HasPrefix(hf.Name, ":") {
		switch {
		case b.sawRegular:
			b.invalid = "pseudo-header after a regular field"
		case hf.Name != ":status":
			b.invalid = "pseudo-header " + hf.Name + " in a response"
		case b.status != "":
			b.invalid = "duplicate :status"
		}
	} else {
		b.sawRegular = true
		if !validWireName(hf.Name) {
			b.invalid = "invalid header field name"
		} else if !httpguts.ValidHeaderFieldValue(hf.Value) {
			b.invalid = "invalid value for header field " + hf.Name
		}
	}
	if b.invalid != "" {
		return
	}
	size := int(hf.Size())
	if size > b.remain {
		b.truncated = true
		return
	}
	b.remain -= size
	if hf.Name == ":status" {
		b.status = hf.Value
		return
	}
	b.fields = append(b.fields, hf)
}

func validWireName(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; !httpguts.IsTokenRune(rune(c)) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return v != ""
}

// onHeaderFragment decodes one HEADERS or CONTINUATION fragment; the
// Framer has checked that CONTINUATIONs follow their HEADERS. Every
// block is decoded, whatever its stream, to keep the HPACK state.
func (cc *conn) onHeaderFragment(id uint32, frag []byte, first, ended, last bool) error {
	b := &cc.hb
	if first {
		clear(b.fields)
		*b = hblock{streamID: id, ended: ended, fields: b.fields[:0], remain: cc.cl.cfg.MaxResponseHeaderBytes}
	}
	b.wire += len(frag)
	if b.wire > 2*cc.cl.cfg.MaxResponseHeaderBytes+4096 {
		return fmt.Errorf("%w: header block over twice the header list limit", http2.ConnectionError(http2.ErrCodeProtocol))
	}
	if _, err := cc.hdec.Write(frag); err != nil {
		return fmt.Errorf("%w: %w", http2.ConnectionError(http2.ErrCodeCompression), err)
	}
	if !last {
		return nil
	}
	if err := cc.hdec.Close(); err != nil {
		return fmt.Errorf("%w: %w", http2.ConnectionError(http2.ErrCodeCompression), err)
	}
	return cc.onHeaders(b)
}

func (cc *conn) onHeaders(b *hblock) error {
	cc.mu.Lock()
	s, err := cc.lookup(b.streamID)
	if s == nil {
		cc.mu.Unlock()
		return err
	}
	fail := func(code http2.ErrCode, reason string) error {
		cc.mu.Unlock()
		cc.abort(s, &StreamError{Code: code, Reason: reason}, code)
		return nil
	}
	switch {
	case s.ended:
		return fail(http2.ErrCodeStreamClosed, "HEADERS after END_STREAM")
	case b.truncated:
		return fail(http2.ErrCodeCancel, fmt.Sprintf("response header section over %d bytes", cc.cl.cfg.MaxResponseHeaderBytes))
	case b.invalid != "":
		return fail(http2.ErrCodeProtocol, b.invalid)
	}
	if s.resp != nil {
		// Trailers.
		if !b.ended || b.status != "" {
			return fail(http2.ErrCodeProtocol, "trailers without END_STREAM or with :status")
		}
		s.trailer = cc.header(b.fields)
		cc.endStream(s)
		cc.mu.Unlock()
		s.signal()
		return nil
	}
	code, err := strconv.Atoi(b.status)
	if len(b.status) != 3 || err != nil || code < 100 {
		return fail(http2.ErrCodeProtocol, "missing or malformed :status")
	}
	if code < 200 {
		s.n1xx++
		switch {
		case code == http.StatusSwitchingProtocols || b.ended:
			return fail(http2.ErrCodeProtocol, "101, or 1xx with END_STREAM")
		case s.n1xx > max1xx:
			return fail(http2.ErrCodeProtocol, "too many 1xx responses")
		}
		if code != http.StatusContinue {
			s.infos = append(s.infos, info{code, textproto.MIMEHeader(cc.header(b.fields))})
		}
		cc.mu.Unlock()
		s.signal()
		return nil
	}
	h := cc.header(b.fields)
	resp := &s.response
	*resp = http.Response{
		Status:        statusText(code),
		StatusCode:    code,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        h,
		ContentLength: -1,
		Request:       s.req,
		Body:          &s.body,
	}
	if cl := h["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || len(cl) > 1 && !allEqual(cl) {
			return fail(http2.ErrCodeProtocol, "invalid Content-Length")
		}
		resp.ContentLength, s.length = n, n
	}
	for _, v := range h["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = textproto.TrimString(k); k != "" && httpguts.ValidTrailerHeader(k) {
				if resp.Trailer == nil {
					resp.Trailer = make(http.Header)
				}
				resp.Trailer[http.CanonicalHeaderKey(k)] = nil
			}
		}
	}
	if b.ended {
		if s.length > 0 {
			return fail(http2.ErrCodeProtocol, "END_STREAM before Content-Length bytes")
		}
		resp.ContentLength = 0
		cc.endStream(s)
	}
	s.resp = resp
	cc.mu.Unlock()
	s.signal()
	return nil
}

func statusText(code int) string {
	switch code {
	case 200:
		return "200 OK"
	case 404:
		return "404 Not Found"
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}

func allEqual(vv []string) bool {
	for _, v := range vv[1:] {
		if v != vv[0] {
			return false
		}
	}
	return true
}

// endStream marks the response complete. Under mu.
func (cc *conn) endStream(s *stream) {
	s.ended = true
	s.respDone = true
	cc.finish(s)
}

// header turns decoded fields into an http.Header with one backing
// array for all values. readLoop only.
func (cc *conn) header(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	vals := make([]string, len(fields))
	for i, f := range fields {
		k := cc.canonical(f.Name)
		if vv := h[k]; vv != nil {
			h[k] = append(vv, f.Value)
			continue
		}
		vals[i] = f.Value
		h[k] = vals[i : i+1 : i+1]
	}
	return h
}

func (cc *conn) canonical(name string) string {
	if k, ok := cc.canon[name]; ok {
		return k
	}
	k := http.CanonicalHeaderKey(name)
	if len(cc.canon) < maxCanonCache {
		cc.canon[name] = k
	}
	return k
}

func (cc *conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	data := f.Data()
	cc.mu.Lock()
	if n > cc.recvAvail {
		cc.mu.Unlock()
		return fmt.Errorf("%w: connection window exceeded", http2.ConnectionError(http2.ErrCodeFlowControl))
	}
	cc.recvAvail -= n
	s, err := cc.lookup(f.StreamID)
	if s == nil {
		// A stream we reset: its data only gives back the window.
		cc.recvUnsent += n
		cc.mu.Unlock()
		if err != nil {
			return err
		}
		cc.flushCredit()
		return nil
	}
	var reason string
	code := http2.ErrCodeProtocol
	switch {
	case s.resp == nil:
		reason = "DATA before the response headers"
	case s.ended:
		reason, code = "DATA after END_STREAM", http2.ErrCodeStreamClosed
	case n > s.recvAvail:
		reason, code = "stream window exceeded", http2.ErrCodeFlowControl
	case s.length >= 0 && (s.got+int64(len(data)) > s.length || f.StreamEnded() && s.got+int64(len(data)) != s.length):
		reason = "body length differs from Content-Length"
	}
	if reason != "" {
		cc.recvUnsent += n
		cc.mu.Unlock()
		cc.abort(s, &StreamError{Code: code, Reason: reason}, code)
		return nil
	}
	s.recvAvail -= n
	// Padding is given back at once, with what is read.
	if pad := n - int64(len(data)); pad > 0 {
		s.recvUnsent += pad
		cc.recvUnsent += pad
	}
	s.got += int64(len(data))
	s.buf.write(data)
	if f.StreamEnded() {
		cc.endStream(s)
	}
	cc.mu.Unlock()
	s.signal()
	return nil
}

// body is a response body; it lives in its stream.
type body struct {
	s      *stream
	closed bool // under mu
}

func (b *body) Read(p []byte) (int, error) {
	s := b.s
	cc := s.cc
	for {
		cc.mu.Lock()
		if b.closed {
			cc.mu.Unlock()
			return 0, ErrBodyClosed
		}
		if s.buf.len > 0 {
			n := s.buf.read(p)
			cc.recvUnsent += int64(n)
			var streamCredit int64
			if !s.ended {
				s.recvUnsent += int64(n)
				if s.recvUnsent >= minRefresh || s.recvUnsent >= s.recvAvail {
					streamCredit = s.recvUnsent
					s.recvAvail += streamCredit
					s.recvUnsent = 0
				}
			}
			connCredit := cc.takeConnCredit()
			var err error
			if s.ended && s.buf.len == 0 {
				err = b.eof()
			}
			cc.mu.Unlock()
			if streamCredit > 0 || connCredit > 0 {
				cc.write(func() error {
					if connCredit > 0 {
						cc.fr.WriteWindowUpdate(0, uint32(connCredit))
					}
					if streamCredit > 0 {
						return cc.fr.WriteWindowUpdate(s.id, uint32(streamCredit))
					}
					return nil
				})
			}
			if err == io.EOF {
				s.stop()
			}
			return n, err
		}
		if s.err != nil {
			err := s.err
			cc.mu.Unlock()
			return 0, err
		}
		if s.ended {
			err := b.eof()
			cc.mu.Unlock()
			s.stop()
			return 0, err
		}
		cc.mu.Unlock()
		<-s.wake
	}
}

// eof copies the trailers into the response. Under mu.
func (b *body) eof() error {
	s := b.s
	if len(s.trailer) > 0 {
		if s.resp.Trailer == nil {
			s.resp.Trailer = s.trailer
		} else {
			for k, vv := range s.trailer {
				s.resp.Trailer[k] = vv
			}
		}
		s.trailer = nil
	}
	return io.EOF
}

// Close ends the response: unread, it resets the stream.
func (b *body) Close() error {
	s := b.s
	cc := s.cc
	cc.mu.Lock()
	if b.closed {
		cc.mu.Unlock()
		return nil
	}
	b.closed = true
	complete := s.ended && s.err == nil
	cc.dropBuffered(s)
	cc.mu.Unlock()
	if complete {
		// The request body may still be going: the caller wants no more.
		cc.mu.Lock()
		stillSending := !s.reqDone
		cc.mu.Unlock()
		if stillSending {
			cc.abort(s, ErrBodyClosed, http2.ErrCodeCancel)
		}
		cc.flushCredit()
		s.stop()
		return nil
	}
	cc.abort(s, ErrBodyClosed, http2.ErrCodeCancel)
	return nil
}

// got1xx passes an informational response to req's httptrace hook.
func got1xx(req *http.Request, in info) error {
	if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
		return trace.Got1xxResponse(in.code, in.h)
	}
	return nil
}
