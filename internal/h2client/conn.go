package h2client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Protocol limits.
const (
	initialWindow    = 65535 // RFC 9113 6.9.2
	defaultFrameSize = 16384
	minRefresh       = 4096 // window credit returned in steps of at least this
	max1xx           = 16   // informational responses per request
	maxCanonCache    = 256
)

// conn is one HTTP/2 connection to an app.
//
// Lock order: wmu before mu. Nothing takes wmu while holding mu.
type conn struct {
	cl   *Client
	addr string
	nc   net.Conn

	wmu  sync.Mutex // the write side: bw, fr's writes, henc, hbuf, lower
	bw   *bufio.Writer
	fr   *http2.Framer // reads only on readLoop
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu            sync.Mutex
	cond          sync.Cond // senders waiting for flow control
	streams       map[uint32]*stream
	nextID        uint32
	reserved      int    // slots reserved, stream not yet opened
	maxConcurrent uint32 // the app's SETTINGS_MAX_CONCURRENT_STREAMS
	peerWindow    int32  // the app's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrameSize uint32 // the app's SETTINGS_MAX_FRAME_SIZE
	sendWindow    int64  // connection send window
	recvAvail     int64  // connection receive window left to the app
	recvUnsent    int64  // consumed, not yet given back
	err           error  // set once the connection is broken
	goAway        bool
	idleSince     time.Time

	hdec       *hpack.Decoder    // readLoop only
	hb         hblock            // readLoop only
	canon      map[string]string // lower-case → canonical, readLoop only
	framesRead atomic.Uint64
	pingOut    atomic.Bool
	seenFrames uint64 // healthCheck only
	timer      *time.Timer
	done       chan struct{} // closed when readLoop ends
}

// dial connects to addr, exchanges the prefaces and waits for the app's
// first SETTINGS, so the first requests know its limits.
func (c *Client) dial(ctx context.Context, addr string) (*conn, error) {
	nc, err := c.cfg.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	connWindow := int64(c.cfg.StreamWindow) * int64(c.cfg.MaxStreams)
	cc := &conn{
		cl:            c,
		addr:          addr,
		nc:            nc,
		bw:            bufio.NewWriterSize(nc, 16<<10),
		streams:       make(map[uint32]*stream),
		nextID:        1,
		maxConcurrent: 100, // until the app's SETTINGS say otherwise
		peerWindow:    initialWindow,
		peerFrameSize: defaultFrameSize,
		sendWindow:    initialWindow,
		recvAvail:     max(connWindow, initialWindow), // the app's view until our WINDOW_UPDATE
		idleSince:     time.Now(),
		canon:         make(map[string]string),
		done:          make(chan struct{}),
	}
	cc.cond.L = &cc.mu
	cc.fr = http2.NewFramer(cc.bw, bufio.NewReaderSize(nc, 16<<10))
	cc.fr.SetReuseFrames()
	cc.fr.SetMaxReadFrameSize(defaultFrameSize)
	cc.fr.MaxHeaderListSize = uint32(c.cfg.MaxResponseHeaderBytes)
	cc.hdec = hpack.NewDecoder(4096, cc.emit)
	// A field over the limit is refused as a stream error (emit), the
	// connection kept; the decoder's own limit, an error for the whole
	// connection, only bounds what a block's bytes could expand to.
	cc.hdec.SetMaxStringLength(4*c.cfg.MaxResponseHeaderBytes + 4096)
	cc.henc = hpack.NewEncoder(&cc.hbuf)

	deadline := time.Now().Add(c.cfg.PingTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	err = cc.handshake(connWindow)
	if !stop() || ctx.Err() != nil {
		err = errors.Join(ctx.Err(), err)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	cc.timer = time.AfterFunc(c.cfg.PingAfter, cc.healthCheck)
	go cc.readLoop()
	return cc, nil
}

func (cc *conn) handshake(connWindow int64) error {
	cc.bw.WriteString(http2.ClientPreface)
	cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(cc.cl.cfg.StreamWindow)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(cc.cl.cfg.MaxResponseHeaderBytes)},
	)
	if connWindow > initialWindow {
		cc.fr.WriteWindowUpdate(0, uint32(connWindow-initialWindow))
	}
	if err := cc.bw.Flush(); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	f, err := cc.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("reading the app's SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("the app's first frame is %v, not SETTINGS", f.Header().Type)
	}
	return cc.applySettings(sf)
}

// TryReserve takes a stream slot if take and one is free. dead reports a
// connection that takes no more requests, ever.
func (cc *conn) TryReserve(take bool) (ok, dead bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil || cc.goAway || cc.nextID > 1<<31-1-2*uint32(cc.cl.cfg.MaxStreams) {
		return false, true
	}
	limit := min(uint32(cc.cl.cfg.MaxStreams), cc.maxConcurrent)
	if !take || uint32(len(cc.streams)+cc.reserved) >= limit {
		return false, false
	}
	cc.reserved++
	return true, false
}

// stream is one request and its response.
type stream struct {
	cc      *conn
	id      uint32
	req     *http.Request
	hasBody bool
	wake    chan struct{} // cap 1: something for the waiting reader
	stop    func() bool   // ends the context watch

	closeBodyOnce sync.Once

	response http.Response // returned as resp
	body     body

	// Under cc.mu.
	resp       *http.Response
	infos      []info // 1xx responses for the caller
	n1xx       int
	buf        chunks
	recvAvail  int64 // stream receive window left to the app
	recvUnsent int64
	sendWindow int64
	ended      bool  // END_STREAM received
	err        error // why reads fail; set once
	trailer    http.Header
	length     int64 // declared Content-Length, or -1
	got        int64
	reqDone    bool // END_STREAM sent, or sending stopped
	respDone   bool // END_STREAM received, or reset
	open       bool // in cc.streams
}

func noStop() bool { return false }

type info struct {
	code int
	h    textproto.MIMEHeader
}

func (s *stream) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *stream) closeReqBody() {
	s.closeBodyOnce.Do(func() { closeBody(s.req.Body) })
}

// roundTrip sends req on cc, where a slot is reserved for it.
func (cc *conn) roundTrip(req *http.Request) (*http.Response, error) {
	s := &stream{cc: cc, req: req, hasBody: hasBody(req), wake: make(chan struct{}, 1), length: -1}
	s.body.s = s
	ctx := req.Context()
	s.stop = noStop
	if ctx.Done() != nil {
		s.stop = context.AfterFunc(ctx, func() { cc.abort(s, ctx.Err(), http2.ErrCodeCancel) })
	}

	if h := cc.cl.testHookReserved; h != nil {
		h(cc)
	}
	cc.wmu.Lock()
	block, err := cc.encodeHeaders(req, s.hasBody)
	if err != nil {
		cc.wmu.Unlock()
		s.stop()
		cc.unreserve()
		closeBody(req.Body)
		return nil, err
	}
	cc.mu.Lock()
	cc.reserved--
	if s.err != nil { // the context ended
		err := s.err
		cc.mu.Unlock()
		cc.wmu.Unlock()
		s.closeReqBody()
		return nil, err
	}
	if cc.err != nil || cc.goAway {
		err := cc.err
		if err == nil {
			err = errors.New("h2client: connection going away")
		}
		cc.mu.Unlock()
		cc.wmu.Unlock()
		if !s.stop() && ctx.Err() != nil { // the context ended meanwhile: abort closed the body
			return nil, ctx.Err()
		}
		return nil, &retryable{reason: "connection closing", err: err, bodyUnread: true}
	}
	s.id = cc.nextID
	cc.nextID += 2
	s.sendWindow = int64(cc.peerWindow)
	s.recvAvail = int64(cc.cl.cfg.StreamWindow)
	s.open = true
	s.reqDone = !s.hasBody
	cc.streams[s.id] = s
	maxFrame := int(cc.peerFrameSize)
	cc.mu.Unlock()
	err = cc.writeHeaderBlock(s.id, !s.hasBody, block, maxFrame)
	if err == nil && !s.hasBody {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		cc.fail(fmt.Errorf("writing request headers: %w", err))
		s.stop()
		return nil, cc.Err()
	}
	if s.hasBody {
		// The HEADERS wait in the buffer for the body's first bytes: a
		// body that is there already (a unary gRPC request) goes out with
		// them in one write. The body goroutine gets the processor first;
		// when it is back, whatever is still buffered (its read blocked:
		// a stream whose client waits for the app) is flushed here.
		go s.writeBody()
		runtime.Gosched()
		cc.wmu.Lock()
		if cc.bw.Buffered() > 0 {
			err = cc.bw.Flush()
		}
		cc.wmu.Unlock()
		if err != nil {
			cc.fail(fmt.Errorf("writing request headers: %w", err))
		}
	}
	return s.awaitResponse()
}

func (cc *conn) unreserve() {
	cc.mu.Lock()
	cc.reserved--
	cc.mu.Unlock()
}

// Close fails the connection with ErrClosed (Pool.Close).
func (cc *conn) Close() error {
	cc.fail(ErrClosed)
	return nil
}

// Err is the error that ended the connection, or nil.
func (cc *conn) Err() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

// awaitResponse waits for the final response head, passing 1xx
// responses to the request's httptrace hook on the way.
func (s *stream) awaitResponse() (*http.Response, error) {
	cc := s.cc
	for {
		cc.mu.Lock()
		infos := s.infos
		s.infos = nil
		resp, err := s.resp, s.err
		cc.mu.Unlock()
		for _, in := range infos {
			if err := got1xx(s.req, in); err != nil {
				cc.abort(s, err, http2.ErrCodeCancel)
				return nil, err
			}
		}
		if resp != nil {
			return resp, nil
		}
		if err != nil {
			s.stop()
			return nil, err
		}
		<-s.wake
	}
}

// encodeHeaders encodes req's header section into cc.hbuf. Under wmu.
func (cc *conn) encodeHeaders(req *http.Request, body bool) ([]byte, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return nil, fmt.Errorf("h2client: invalid host %q", host)
	}
	path := req.URL.RequestURI()
	if req.URL.Opaque != "" || !validPath(path) {
		return nil, fmt.Errorf("h2client: invalid request path %q", path)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validMethod(method) {
		return nil, fmt.Errorf("h2client: invalid method %q", method)
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("h2client: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("h2client: invalid value for header field %q", k)
			}
		}
	}
	for k := range req.Trailer {
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidTrailerHeader(k) {
			return nil, fmt.Errorf("h2client: invalid trailer field name %q", k)
		}
	}
	cc.hbuf.Reset()
	enc := cc.henc
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: host})
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
	enc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
	enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "http"})
	for k, vv := range req.Header {
		name := lowerHeader(k)
		switch name {
		case "host", "content-length", "connection", "proxy-connection", "transfer-encoding", "upgrade", "keep-alive", "trailer":
			continue
		case "te":
			// Only "trailers" is allowed in HTTP/2.
			for _, v := range vv {
				if strings.EqualFold(strings.TrimSpace(v), "trailers") {
					enc.WriteField(hpack.HeaderField{Name: "te", Value: "trailers"})
					break
				}
			}
			continue
		case "user-agent":
			if len(vv) == 0 || vv[0] == "" {
				continue
			}
		}
		if name == "cookie" {
			// Sent as separate fields, which compress better (RFC 9113 8.2.3).
			for _, v := range vv {
				for c := range strings.SplitSeq(v, ";") {
					if c = strings.TrimSpace(c); c != "" {
						enc.WriteField(hpack.HeaderField{Name: name, Value: c})
					}
				}
			}
			continue
		}
		for _, v := range vv {
			enc.WriteField(hpack.HeaderField{Name: name, Value: v, Sensitive: name == "authorization"})
		}
	}
	if body && req.ContentLength > 0 {
		enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(req.ContentLength, 10)})
	}
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, lowerHeader(k))
		}
		enc.WriteField(hpack.HeaderField{Name: "trailer", Value: strings.Join(keys, ",")})
	}
	return cc.hbuf.Bytes(), nil
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return m != ""
}

func validPath(p string) bool {
	if p == "" || (p[0] != '/' && p != "*") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// writeHeaderBlock writes a header block as HEADERS and CONTINUATION
// frames. Under wmu.
func (cc *conn) writeHeaderBlock(id uint32, endStream bool, block []byte, maxFrame int) error {
	first := true
	for len(block) > 0 || first {
		frag := block
		if len(frag) > maxFrame {
			frag = frag[:maxFrame]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = cc.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeBody sends the request body with flow control, then its trailers
// or END_STREAM; it runs on a goroutine of its own.
func (s *stream) writeBody() {
	cc := s.cc
	if h := cc.cl.testHookBodyDone; h != nil {
		defer h()
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := s.req.Body.Read(buf)
		eof := errors.Is(rerr, io.EOF)
		if rerr != nil && !eof {
			if s.stopAfterResponse() {
				return
			}
			cc.abort(s, fmt.Errorf("h2client: reading request body: %w", rerr), http2.ErrCodeCancel)
			return
		}
		var trailer http.Header
		if eof {
			trailer = s.req.Trailer
		}
		endWithData := eof && !hasValues(trailer)
		data := buf[:n]
		for len(data) > 0 {
			k, err := s.awaitSend(len(data))
			if err != nil {
				s.closeReqBody()
				return
			}
			last := k == len(data)
			if err := cc.write(func() error { return cc.fr.WriteData(s.id, last && endWithData, data[:k]) }); err != nil {
				s.closeReqBody()
				return
			}
			data = data[k:]
		}
		if !eof {
			continue
		}
		var err error
		switch {
		case hasValues(trailer):
			err = cc.writeTrailers(s, trailer)
		case n == 0:
			if err = s.sendable(); err == nil {
				err = cc.write(func() error { return cc.fr.WriteData(s.id, true, nil) })
			}
		}
		s.closeReqBody()
		if err == nil {
			cc.mu.Lock()
			s.reqDone = true
			cc.finish(s)
			cc.mu.Unlock()
		}
		return
	}
}

// stopAfterResponse decides what a request body that fails to read
// does to its stream, as net/http's HTTP/2 transport does
// (errStopReqBodyWrite; a request-body error after the response ended
// leaves the response's buffered data and EOF alone). It reports true,
// and the response stays readable, when:
//   - sending had been stopped already (reqDone): the read failed
//     because the stream closed the body itself, on the app's
//     RST_STREAM(NO_ERROR) after a complete response (RFC 9113 8.1) or
//     on the response body's Close. Closing an HTTP/3 request body
//     cancels its reads (H3_REQUEST_CANCELLED, local): aborting here
//     lost responses still buffered (TestStalledH1ReadersIsolated's
//     probe, TestBodyClosedByAppResetKeepsResponse);
//   - the stream has failed already (its own error stands);
//   - the response has arrived whole: the request side ends with
//     RST_STREAM(CANCEL), the caller gave up sending once it had its
//     answer.
//
// Otherwise (false) the request is broken while the app may still be
// reading it and answering: the caller aborts the stream, as net/http
// does; the app must not take a truncated body for a whole one.
func (s *stream) stopAfterResponse() bool {
	cc := s.cc
	cc.mu.Lock()
	if s.err != nil || s.reqDone {
		cc.mu.Unlock()
		s.closeReqBody()
		return true
	}
	if !s.ended {
		cc.mu.Unlock()
		return false
	}
	s.reqDone = true
	open := s.open
	cc.finish(s)
	cc.cond.Broadcast()
	cc.mu.Unlock()
	s.closeReqBody()
	if open {
		cc.write(func() error { return cc.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
	}
	return true
}

func hasValues(h http.Header) bool {
	for _, vv := range h {
		if len(vv) > 0 {
			return true
		}
	}
	return false
}

// sendable reports whether the stream may still send.
func (s *stream) sendable() error {
	cc := s.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.reqDone {
		return errSendStopped
	}
	return nil
}

var errSendStopped = errors.New("h2client: the app stopped the request body")

func (cc *conn) writeTrailers(s *stream, trailer http.Header) error {
	if err := s.sendable(); err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	cc.hbuf.Reset()
	for k, vv := range trailer {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		name := lowerHeader(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				cc.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
	cc.mu.Lock()
	maxFrame := int(cc.peerFrameSize)
	cc.mu.Unlock()
	err := cc.writeHeaderBlock(s.id, true, cc.hbuf.Bytes(), maxFrame)
	if err == nil {
		err = cc.bw.Flush()
	}
	if err != nil {
		cc.fail(fmt.Errorf("writing request trailers: %w", err))
	}
	return err
}

// awaitSend waits until the stream may send at least one byte and takes
// up to max bytes of both windows.
func (s *stream) awaitSend(max int) (int, error) {
	cc := s.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for {
		if s.err != nil {
			return 0, s.err
		}
		if s.reqDone {
			return 0, errSendStopped
		}
		if s.sendWindow > 0 && cc.sendWindow > 0 {
			n := int64(min(max, int(cc.peerFrameSize)))
			n = min(n, s.sendWindow, cc.sendWindow)
			s.sendWindow -= n
			cc.sendWindow -= n
			return int(n), nil
		}
		cc.cond.Wait()
	}
}

// write runs w under wmu and flushes; a failure breaks the connection.
func (cc *conn) write(w func() error) error {
	cc.wmu.Lock()
	err := w()
	if err == nil {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		cc.fail(fmt.Errorf("writing: %w", err))
	}
	return err
}

// abort ends s with err: its reads fail with err, its body stops, and
// the app is told with RST_STREAM code unless code is noRST or the
// stream had already ended on both sides.
func (cc *conn) abort(s *stream, err error, code http2.ErrCode) {
	cc.mu.Lock()
	if s.err != nil || (s.respDone && s.reqDone && s.buf.len == 0) {
		cc.mu.Unlock()
		return
	}
	s.err = err
	sendRST := s.open && cc.err == nil && code != noRST
	s.reqDone, s.respDone = true, true
	cc.dropBuffered(s)
	cc.finish(s)
	cc.cond.Broadcast()
	cc.mu.Unlock()
	s.signal()
	s.closeReqBody()
	if sendRST {
		cc.write(func() error { return cc.fr.WriteRSTStream(s.id, code) })
	}
	cc.flushCredit()
}

// dropBuffered gives the connection window of s's unread data back.
// Under mu.
func (cc *conn) dropBuffered(s *stream) {
	if n := s.buf.len; n > 0 {
		s.buf.reset()
		cc.recvUnsent += int64(n)
	}
}

// finish removes s from the connection once both directions are done.
// Under mu.
func (cc *conn) finish(s *stream) {
	if !s.open || !s.reqDone || !s.respDone {
		return
	}
	s.open = false
	delete(cc.streams, s.id)
	if len(cc.streams) == 0 {
		cc.idleSince = time.Now()
		if cc.goAway && cc.err == nil && cc.reserved == 0 {
			cc.err = errors.New("h2client: connection closed after GOAWAY")
			cc.nc.Close()
		}
	}
}

// flushCredit sends the connection-level WINDOW_UPDATE when enough
// credit has gathered.
func (cc *conn) flushCredit() {
	cc.mu.Lock()
	n := cc.takeConnCredit()
	cc.mu.Unlock()
	if n > 0 {
		cc.write(func() error { return cc.fr.WriteWindowUpdate(0, uint32(n)) })
	}
}

// takeConnCredit returns the connection credit to send now, if any.
// Under mu.
func (cc *conn) takeConnCredit() int64 {
	if cc.err != nil || cc.recvUnsent == 0 || (cc.recvUnsent < minRefresh && cc.recvUnsent < cc.recvAvail) {
		return 0
	}
	n := cc.recvUnsent
	cc.recvUnsent = 0
	cc.recvAvail += n
	return n
}

// fail breaks the connection: every stream fails with err.
func (cc *conn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = fmt.Errorf("h2client: connection to app %s: %w", cc.addr, err)
	streams := make([]*stream, 0, len(cc.streams))
	for _, s := range cc.streams {
		streams = append(streams, s)
	}
	cc.mu.Unlock()
	cc.nc.Close()
	if cc.timer != nil {
		cc.timer.Stop()
	}
	for _, s := range streams {
		cc.abort(s, cc.err, http2.ErrCodeCancel)
	}
	cc.mu.Lock()
	cc.cond.Broadcast()
	cc.mu.Unlock()
}

// healthCheck runs every PingAfter: a connection that read nothing since
// the last check is pinged; one whose ping went unanswered is closed; one
// idle for IdleTimeout is closed.
func (cc *conn) healthCheck() {
	cfg := &cc.cl.cfg
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	if len(cc.streams) == 0 && cc.reserved == 0 && time.Since(cc.idleSince) >= cfg.IdleTimeout {
		cc.err = fmt.Errorf("h2client: connection to app %s: %w", cc.addr, errIdle)
		cc.mu.Unlock()
		cc.write(func() error { return cc.fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
		cc.nc.Close()
		return
	}
	cc.mu.Unlock()
	if cc.pingOut.Load() {
		cc.fail(errPingTimeout)
		return
	}
	if frames := cc.framesRead.Load(); frames == cc.seenFrames {
		cc.pingOut.Store(true)
		if cc.write(func() error { return cc.fr.WritePing(false, [8]byte{'q', 'm', 'h', '2', 'p', 'i', 'n', 'g'}) }) == nil {
			cc.timer.Reset(cfg.PingTimeout)
		}
		return
	} else {
		cc.seenFrames = frames
	}
	cc.timer.Reset(cfg.PingAfter)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, defaultFrameSize); return &b }}

// chunks is a stream's received, unread data in pooled 16 KiB chunks.
type chunks struct {
	bufs []*[]byte
	off  int // read offset in bufs[0]
	end  int // write offset in the last buffer
	len  int
}

func (c *chunks) write(p []byte) {
	for len(p) > 0 {
		if len(c.bufs) == 0 || c.end == defaultFrameSize {
			c.bufs = append(c.bufs, bufPool.Get().(*[]byte))
			c.end = 0
		}
		last := *c.bufs[len(c.bufs)-1]
		n := copy(last[c.end:], p)
		c.end += n
		c.len += n
		p = p[n:]
	}
}

func (c *chunks) read(p []byte) int {
	n := 0
	for n < len(p) && c.len > 0 {
		b := *c.bufs[0]
		stop := defaultFrameSize
		if len(c.bufs) == 1 {
			stop = c.end
		}
		k := copy(p[n:], b[c.off:stop])
		n += k
		c.off += k
		c.len -= k
		if c.off == stop {
			bufPool.Put(c.bufs[0])
			c.bufs[0] = nil
			c.bufs = c.bufs[1:]
			c.off = 0
			if len(c.bufs) == 0 {
				c.bufs, c.end = nil, 0
			}
		}
	}
	return n
}

func (c *chunks) reset() {
	for i, b := range c.bufs {
		bufPool.Put(b)
		c.bufs[i] = nil
	}
	*c = chunks{}
}
