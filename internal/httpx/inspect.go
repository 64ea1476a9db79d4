package httpx

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// InspectConn wraps a cleartext HTTP/1 server connection so that Guard can
// see what net/http normalises away. Every byte the server reads passes
// through a small streaming parser that follows HTTP/1.1 message framing
// (request line, field lines, Content-Length or chunked body, trailers) and
// records, for each request head, whether it was well formed. The parser
// never modifies, buffers or delays data; it only observes it.
//
// It is deliberately stricter than net/http: CRLF line endings only, no
// obs-fold, no Transfer-Encoding in HTTP/1.0, never both Content-Length and
// Transfer-Encoding, strict chunk lines. Once it sees a violation it stops
// parsing and marks the connection bad: the offending request, and every
// later one on that connection, is refused by Guard (which also closes the
// connection). Requests net/http refuses on its own never reach Guard, so
// the two layers cannot disagree about where a request starts.
//
// For the verdicts to reach Guard, the http.Server must use ConnContext. If
// the first byte on the connection is a TLS handshake record (the server
// does TLS itself) inspection is switched off and Guard falls back to
// ValidateRequest alone. The returned conn implements CloseWrite when c
// does (net/http uses it for graceful closes) and io.ReaderFrom.
func InspectConn(c net.Conn) net.Conn {
	in := &inspector{}
	if cw, ok := c.(closeWriter); ok {
		return &inspectedConnCW{inspectedConn{Conn: c, in: in}, cw}
	}
	return &inspectedConn{Conn: c, in: in}
}

// InspectListener wraps every accepted connection with InspectConn.
func InspectListener(l net.Listener) net.Listener {
	return inspectListener{l}
}

type inspectListener struct{ net.Listener }

func (l inspectListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return InspectConn(c), nil
}

// ConnContext is an http.Server.ConnContext hook that makes the framing
// verdicts of an InspectConn connection available to Guard. If the server
// already has a ConnContext, call this one from it.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if ic, ok := c.(interface{ inspector() *inspector }); ok {
		return context.WithValue(ctx, inspectorKey{}, ic.inspector())
	}
	return ctx
}

type inspectorKey struct{}

func inspectorFrom(ctx context.Context) *inspector {
	in, _ := ctx.Value(inspectorKey{}).(*inspector)
	return in
}

type closeWriter interface{ CloseWrite() error }

type inspectedConn struct {
	net.Conn
	in *inspector
}

func (c *inspectedConn) inspector() *inspector { return c.in }

// NetConn returns the wrapped connection (for socket options such as
// SO_LINGER when a hijacked connection must be reset).
func (c *inspectedConn) NetConn() net.Conn { return c.Conn }

func (c *inspectedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.in.scan(p[:n])
	}
	return n, err
}

// ReadFrom lets writes use the underlying connection's fast path.
func (c *inspectedConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(c.Conn, r)
}

type inspectedConnCW struct {
	inspectedConn
	cw closeWriter
}

func (c *inspectedConnCW) CloseWrite() error { return c.cw.CloseWrite() }

// Parser states.
const (
	stMethod = iota
	stTarget
	stVersion
	stReqCR
	stReqLF
	stFieldStart
	stFieldName
	stFieldValue
	stFieldLF
	stHeadLF
	stBody
	stChunkSize
	stChunkExt
	stChunkLF
	stChunkData
	stChunkDataCR
	stChunkDataLF
	stTrailerStart
	stTrailerName
	stTrailerValue
	stTrailerLF
	stTrailerEndLF
	stStopped // poisoned or switched off: ignore everything
)

const (
	maxStoredLine = 1024 // bytes of "METHOD SP target" kept for matching
	maxQueued     = 256  // verdicts waiting for Guard
	maxFieldValue = 256  // bytes kept of Content-Length / Transfer-Encoding values
	maxChunkLine  = 4096 // net/http's limit for a chunk-size line
	maxHexDigits  = 16
)

// Framing verdicts.
var (
	errBadRequestLine = badRequest("malformed request line")
	errBareLF         = badRequest("line not terminated by CRLF")
	errObsFold        = badRequest("obs-fold or whitespace at start of header line")
	errRawFieldName   = badRequest("invalid header field name")
	errRawFieldValue  = badRequest("invalid header field value")
	errRawCLAndTE     = badRequest("both Content-Length and Transfer-Encoding")
	errRawTEHTTP10    = badRequest("Transfer-Encoding in an HTTP/1.0 request")
	errRawTE          = badRequest("Transfer-Encoding other than chunked")
	errRawCL          = badRequest("invalid or conflicting Content-Length")
	errChunkSize      = badRequest("invalid chunk size line")
	errChunkData      = badRequest("chunk data not followed by CRLF")
	errTrailer        = badRequest("invalid trailer section")
	errTooPipelined   = badRequest("too many pipelined requests")
	errDesync         = badRequest("request framing could not be verified")
)

// verdict is the inspector's opinion of one request head.
type verdict struct {
	line    string // "METHOD SP request-target", truncated to maxStoredLine
	lineLen int    // untruncated length of line
	offset  int64  // stream offset of the head's first byte
	err     *RequestError
}

// matches compares the request line net/http parsed with the one seen on
// the wire, as far as it was kept.
func (v *verdict) matches(method, uri string) bool {
	if v.lineLen != len(method)+1+len(uri) {
		return false
	}
	l := v.line
	n := min(len(l), len(method))
	if l[:n] != method[:n] {
		return false
	}
	l = l[n:]
	if l == "" {
		return true
	}
	if l[0] != ' ' {
		return false
	}
	l = l[1:]
	return len(l) <= len(uri) && uri[:len(l)] == l
}

// inspector is the streaming HTTP/1.1 request-framing parser.
type inspector struct {
	mu sync.Mutex

	st     int
	offset int64 // bytes scanned so far
	n      int   // element length / position within the current state

	// request line
	headStart int64
	line      []byte
	lineLen   int
	minor     byte

	// fields
	field    int // fieldOther, fieldCL or fieldTE
	name     [len("transfer-encoding")]byte
	nameLen  int
	val      []byte
	valOver  bool
	clCount  int
	clFirst  string
	clBad    bool
	teCount  int
	teOK     bool // the single TE value is "chunked"
	remain   uint64
	digits   int
	lastPOST bool // the previous request's method was POST
	skip     int  // leading CR/LF bytes still tolerated before a request line

	queue     []verdict
	poisonErr *RequestError // set once stopped because of a violation
	disabled  bool          // stopped because the stream is TLS
}

const (
	fieldOther = iota
	fieldCL
	fieldTE
)

// scan feeds bytes read by the server.
func (s *inspector) scan(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offset == 0 && len(p) > 0 && p[0] == 0x16 {
		// TLS handshake record: the server terminates TLS above us.
		s.st, s.disabled = stStopped, true
	}
	for i := 0; i < len(p) && s.st != stStopped; {
		if s.st == stBody || s.st == stChunkData {
			k := uint64(len(p) - i)
			if k > s.remain {
				k = s.remain
			}
			i += int(k)
			s.offset += int64(k)
			s.remain -= k
			if s.remain == 0 {
				if s.st == stBody {
					s.startRequest()
				} else {
					s.st = stChunkDataCR
				}
			}
			continue
		}
		if k := s.run(p[i:]); k > 0 {
			i += k
			s.offset += int64(k)
			continue
		}
		s.step(p[i])
		i++
		s.offset++
	}
}

// run consumes the bytes at the start of p that step would take one by
// one without leaving its state: the rest of a request-target, of a
// field name or of a field value not kept for framing. It returns how
// many it took (0 if the state has no such run); the byte after them is
// left to step. A request head is mostly such runs, and a loop over them
// costs a fraction of a step per byte (BenchmarkInspectorScan).
func (s *inspector) run(p []byte) int {
	k := 0
	switch s.st {
	case stTarget:
		for k < len(p) && p[k] > ' ' && p[k] != 0x7f {
			k++
		}
		if room := maxStoredLine - len(s.line); room > 0 {
			s.line = append(s.line, p[:min(k, room)]...)
		}
		s.lineLen += k
		s.n += k
	case stFieldName:
		for k < len(p) && isTchar(p[k]) {
			s.addName(p[k])
			k++
		}
	case stFieldValue:
		if s.field != fieldOther {
			return 0
		}
		for k < len(p) && (p[k] >= ' ' && p[k] != 0x7f || p[k] == '\t') {
			k++
		}
	}
	return k
}

func (s *inspector) startRequest() {
	s.st, s.n = stMethod, 0
	s.headStart = s.offset
	s.line = s.line[:0]
	s.lineLen, s.minor = 0, 0
	s.clCount, s.clFirst, s.clBad = 0, "", false
	s.teCount, s.teOK = 0, false
	s.remain, s.digits = 0, 0
	s.skip = 0
	if s.lastPOST {
		// net/http discards up to four CR/LF bytes after a POST ("RFC
		// 7230 section 3 tolerance for old buggy clients"); follow it so
		// both parsers agree on where the next request starts.
		s.skip = 4
	}
}

func (s *inspector) appendLine(c byte) {
	if len(s.line) < maxStoredLine {
		s.line = append(s.line, c)
	}
	s.lineLen++
}

func (s *inspector) step(c byte) {
	switch s.st {
	case stMethod:
		switch {
		case (c == '\r' || c == '\n') && s.n == 0 && s.skip > 0:
			s.skip--
		case isTchar(c):
			if s.n == 0 {
				s.headStart = s.offset
			}
			s.appendLine(c)
			s.n++
		case c == ' ' && s.n > 0:
			s.appendLine(c)
			s.st, s.n = stTarget, 0
		default:
			s.poison(errBadRequestLine)
		}
	case stTarget:
		switch {
		case c > ' ' && c != 0x7f:
			s.appendLine(c)
			s.n++
		case c == ' ' && s.n > 0:
			s.st, s.n = stVersion, 0
		default:
			s.poison(errBadRequestLine)
		}
	case stVersion:
		const prefix = "HTTP/1."
		switch {
		case s.n < len(prefix):
			if c != prefix[s.n] {
				s.poison(errBadRequestLine)
				return
			}
			s.n++
		case c >= '0' && c <= '9':
			s.minor = c
			s.st = stReqCR
		default:
			s.poison(errBadRequestLine)
		}
	case stReqCR:
		if c != '\r' {
			s.poisonLineEnd(c, errBadRequestLine)
			return
		}
		s.st = stReqLF
	case stReqLF, stFieldLF, stChunkLF, stChunkDataLF, stTrailerLF, stTrailerEndLF, stHeadLF:
		if c != '\n' {
			s.poison(errBareLFOr(s.st))
			return
		}
		s.afterLF()
	case stFieldStart:
		switch {
		case c == '\r':
			s.st = stHeadLF
		case c == ' ' || c == '\t':
			s.poison(errObsFold)
		case isTchar(c):
			s.st, s.nameLen, s.field = stFieldName, 0, fieldOther
			s.addName(c)
		default:
			s.poisonLineEnd(c, errRawFieldName)
		}
	case stFieldName:
		switch {
		case isTchar(c):
			s.addName(c)
		case c == ':':
			s.field = s.classifyName()
			s.val, s.valOver = s.val[:0], false
			s.st = stFieldValue
		default:
			s.poison(errRawFieldName)
		}
	case stFieldValue:
		switch {
		case c == '\r':
			s.st = stFieldLF
		case (c < ' ' && c != '\t') || c == 0x7f:
			s.poisonLineEnd(c, errRawFieldValue)
		case s.field != fieldOther:
			if len(s.val) < maxFieldValue {
				s.val = append(s.val, c)
			} else {
				s.valOver = true
			}
		}
	case stChunkSize:
		switch {
		case unhex(c) >= 0:
			if s.digits == maxHexDigits {
				s.poison(errChunkSize)
				return
			}
			s.remain = s.remain<<4 | uint64(unhex(c))
			s.digits++
			s.n++
		case c == ';' && s.digits > 0:
			s.st = stChunkExt
			s.n++
		case c == '\r' && s.digits > 0:
			s.st = stChunkLF
		default:
			s.poison(errChunkSize)
		}
	case stChunkExt:
		switch {
		case c == '\r':
			s.st = stChunkLF
		case (c < ' ' && c != '\t') || c == 0x7f:
			s.poison(errChunkSize)
		default:
			if s.n++; s.n >= maxChunkLine {
				s.poison(errChunkSize)
			}
		}
	case stChunkDataCR:
		if c != '\r' {
			s.poison(errChunkData)
			return
		}
		s.st = stChunkDataLF
	case stTrailerStart:
		switch {
		case c == '\r':
			s.st = stTrailerEndLF
		case isTchar(c):
			s.st = stTrailerName
		default:
			s.poison(errTrailer)
		}
	case stTrailerName:
		switch {
		case isTchar(c):
		case c == ':':
			s.st = stTrailerValue
		default:
			s.poison(errTrailer)
		}
	case stTrailerValue:
		switch {
		case c == '\r':
			s.st = stTrailerLF
		case (c < ' ' && c != '\t') || c == 0x7f:
			s.poison(errTrailer)
		}
	}
}

// afterLF completes a CRLF in state s.st.
func (s *inspector) afterLF() {
	switch s.st {
	case stReqLF:
		s.st = stFieldStart
	case stFieldLF:
		s.endField()
		s.st = stFieldStart
	case stHeadLF:
		s.endHead()
	case stChunkLF:
		s.n = 0
		if s.remain == 0 {
			s.st = stTrailerStart
		} else {
			s.st = stChunkData
		}
	case stChunkDataLF:
		s.st, s.digits, s.remain, s.n = stChunkSize, 0, 0, 0
	case stTrailerLF:
		s.st = stTrailerStart
	case stTrailerEndLF:
		s.startRequest()
	}
}

// errBareLFOr picks the error for a CR not followed by LF.
func errBareLFOr(st int) *RequestError {
	switch st {
	case stChunkLF:
		return errChunkSize
	case stChunkDataLF:
		return errChunkData
	case stTrailerLF, stTrailerEndLF:
		return errTrailer
	}
	return errBareLF
}

// poisonLineEnd reports a bare LF as such, anything else as err.
func (s *inspector) poisonLineEnd(c byte, err *RequestError) {
	if c == '\n' {
		err = errBareLF
	}
	s.poison(err)
}

func (s *inspector) addName(c byte) {
	if s.nameLen < len(s.name) {
		s.name[s.nameLen] = lower(c)
	}
	s.nameLen++
}

func (s *inspector) classifyName() int {
	if s.nameLen > len(s.name) {
		return fieldOther
	}
	switch string(s.name[:s.nameLen]) {
	case "content-length":
		return fieldCL
	case "transfer-encoding":
		return fieldTE
	}
	return fieldOther
}

func (s *inspector) endField() {
	v := strings.Trim(string(s.val), " \t")
	switch s.field {
	case fieldCL:
		s.clCount++
		switch {
		case s.valOver || !isDecimal(v):
			s.clBad = true
		case s.clCount == 1:
			s.clFirst = v
		case v != s.clFirst:
			s.clBad = true
		}
	case fieldTE:
		s.teCount++
		s.teOK = s.teCount == 1 && !s.valOver && strings.EqualFold(v, "chunked")
	}
}

// endHead records the verdict for a complete head and sets up the body.
func (s *inspector) endHead() {
	var err *RequestError
	switch {
	case s.teCount > 0 && s.clCount > 0:
		err = errRawCLAndTE
	case s.teCount > 0 && s.minor == '0':
		err = errRawTEHTTP10
	case s.teCount > 0 && !s.teOK:
		err = errRawTE
	case s.clBad:
		err = errRawCL
	}
	if len(s.queue) >= maxQueued {
		s.poison(errTooPipelined)
		return
	}
	s.lastPOST = s.lineLen > 5 && string(s.line[:5]) == "POST "
	s.queue = append(s.queue, verdict{
		line:    string(s.line),
		lineLen: s.lineLen,
		offset:  s.headStart,
		err:     err,
	})
	if err != nil {
		s.stop(err)
		return
	}
	switch {
	case s.teCount > 0:
		s.st, s.digits, s.remain, s.n = stChunkSize, 0, 0, 0
	case s.clCount > 0:
		s.remain = parseDecimal(s.clFirst)
		if s.remain > 0 {
			s.st = stBody
			return
		}
		s.startRequest()
	default:
		s.startRequest()
	}
}

// poison stops inspection because of a framing violation. If the
// violation is in the body of a request whose verdict Guard has not yet
// collected, that verdict is turned into a refusal.
func (s *inspector) poison(err *RequestError) {
	switch s.st {
	case stChunkSize, stChunkExt, stChunkLF, stChunkDataCR, stChunkDataLF,
		stTrailerStart, stTrailerName, stTrailerValue, stTrailerLF, stTrailerEndLF:
		if n := len(s.queue); n > 0 && s.queue[n-1].offset == s.headStart && s.queue[n-1].err == nil {
			s.queue[n-1].err = err
		}
	}
	s.stop(err)
}

func (s *inspector) stop(err *RequestError) {
	s.st = stStopped
	if s.poisonErr == nil {
		s.poisonErr = err
	}
}

// check is Guard's question: may the request with this method and
// request-target, just parsed by net/http, proceed?
//
// Verdicts are consumed strictly in order. The only head allowed to be
// skipped is a good "OPTIONS *", which net/http answers without calling
// the handler. Anything else that does not line up means the two parsers
// (or the handler chain: Guard must see every request) disagree, and the
// request is refused.
func (s *inspector) check(method, uri string) *RequestError {
	_, err := s.checkAt(method, uri)
	return err
}

// checkAt is check that also returns the stream offset of the head the
// request was matched with (-1 if none).
func (s *inspector) checkAt(method, uri string) (int64, *RequestError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 {
		v := s.queue[0]
		s.queue[0] = verdict{}
		s.queue = s.queue[1:]
		switch {
		case v.err != nil:
			return -1, v.err
		case v.matches(method, uri):
			return v.offset, nil
		case v.line == "OPTIONS *":
			continue
		default:
			return -1, errDesync
		}
	}
	if s.disabled {
		return -1, nil
	}
	if s.poisonErr != nil {
		return -1, s.poisonErr
	}
	return -1, errDesync
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func parseDecimal(s string) uint64 {
	var n uint64
	for i := 0; i < len(s); i++ {
		n = n*10 + uint64(s[i]-'0')
	}
	return n
}

// isTchar reports whether c is an RFC 9110 §5.6.2 token character.
func isTchar(c byte) bool { return httpguts.IsTokenRune(rune(c)) }
