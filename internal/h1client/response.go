package h1client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// ProtocolError is a response the app sent that this client refuses to
// interpret: a malformed status line or field, conflicting framing, a bad
// chunk. The connection it came on is closed; the caller answers 502.
type ProtocolError struct{ Reason string }

func (e *ProtocolError) Error() string { return "h1client: malformed response from app: " + e.Reason }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Reason: fmt.Sprintf(format, args...)}
}

// HeaderTooLargeError: the app's response head (or trailer section) is
// longer than the configured limit.
type HeaderTooLargeError struct{ Limit int }

func (e *HeaderTooLargeError) Error() string {
	return fmt.Sprintf("h1client: response header from app exceeds %d bytes", e.Limit)
}

// maxChunkLine bounds a chunk-size line (size and extensions), as
// net/http's chunked reader does.
const maxChunkLine = 4096

// quote shows at most 64 bytes of a malformed line in an error.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strconv.Quote(s)
}

// readLines appends to buf the lines read from br up to and including
// the first empty line ("\r\n" or "\n"), at most limit bytes in all. A
// read error with nothing read at all is returned as is (io.EOF: the app
// closed the connection before answering); a partial section ends in
// io.ErrUnexpectedEOF.
func readLines(br *bufio.Reader, buf []byte, limit int) ([]byte, error) {
	start := len(buf)
	lineStart := start
	for {
		line, err := br.ReadSlice('\n')
		if len(buf)-start+len(line) > limit {
			return buf, &HeaderTooLargeError{Limit: limit}
		}
		buf = append(buf, line...)
		if err == bufio.ErrBufferFull {
			continue // a line longer than the read buffer: keep going
		}
		if err != nil {
			if len(buf) > start && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
		if l := buf[lineStart:]; len(l) == 1 || (len(l) == 2 && l[0] == '\r') {
			return buf, nil
		}
		lineStart = len(buf)
	}
}

// nextLine cuts the first line off s; the line is returned without its
// "\n" or "\r\n". ok is false when s holds no complete line.
func nextLine(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return "", s, false
	}
	line, rest = s[:i], s[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, rest, true
}

// parseStatusLine parses "HTTP/1.x SSS reason". Only HTTP/1.0 and
// HTTP/1.1 are accepted; the code is three digits from 100 to 999, as
// net/http's server accepts them for WriteHeader.
func parseStatusLine(line string) (code, minor int, status string, err error) {
	if len(line) < 12 || line[:7] != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' {
		return 0, 0, "", protoErr("bad status line %s", quote(line))
	}
	minor = int(line[7] - '0')
	for _, c := range []byte(line[9:12]) {
		if c < '0' || c > '9' {
			return 0, 0, "", protoErr("bad status code in %s", quote(line))
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return 0, 0, "", protoErr("bad status code in %s", quote(line))
	}
	if len(line) > 12 {
		if line[12] != ' ' {
			return 0, 0, "", protoErr("bad status code in %s", quote(line))
		}
		for i := 13; i < len(line); i++ {
			if c := line[i]; c != '\t' && (c < ' ' || c == 0x7f) {
				return 0, 0, "", protoErr("control character in reason phrase %s", quote(line))
			}
		}
	}
	return code, minor, line[9:], nil
}

// parseFields parses header (or trailer) field lines, up to the empty
// line that ends them, into h. Keys are canonicalised like net/http's;
// values keep their bytes, without leading and trailing blanks. It
// refuses what RFC 9112 lets a proxy refuse and net/http partly accepts:
// obs-fold (a line starting with a blank), a name that is not a token or
// has blanks before its colon, and control characters other than HTAB
// in a value (a bare CR included).
func parseFields(s string, h http.Header) error {
	// One backing array for the first value of every field, as net/http
	// does: one allocation instead of one per field.
	strs := make([]string, strings.Count(s, "\n"))
	for {
		line, rest, ok := nextLine(s)
		if !ok {
			return protoErr("header section not terminated")
		}
		s = rest
		if line == "" {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return protoErr("obsolete line folding at %s", quote(line))
		}
		i := strings.IndexByte(line, ':')
		if i <= 0 {
			return protoErr("header line without a field name %s", quote(line))
		}
		name := line[:i]
		if !httpguts.ValidHeaderFieldName(name) {
			return protoErr("invalid header field name %s", quote(name))
		}
		value := trimBlanks(line[i+1:])
		for j := 0; j < len(value); j++ {
			if c := value[j]; c != '\t' && (c < ' ' || c == 0x7f) {
				return protoErr("invalid byte in value of header %s", quote(name))
			}
		}
		key := textproto.CanonicalMIMEHeaderKey(name) // no allocation when canonical already
		if vv, ok := h[key]; ok {
			h[key] = append(vv, value)
		} else {
			strs[0] = value
			h[key] = strs[:1:1]
			strs = strs[1:]
		}
	}
}

func trimBlanks(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// framing is how a response's body is delimited.
type framing struct {
	length  int64 // Content-Length; -1 when chunked or until close
	chunked bool
	te      bool // Transfer-Encoding: chunked, even where no body follows
	noBody  bool // HEAD, 204, 304 (and 1xx, which never get here)
	close   bool // the app will close the connection after this response
}

// responseFraming decides how the body of a final response is delimited
// (RFC 9112 §6.3) and whether the connection stays open, refusing
// framing an intermediary must not guess at: conflicting Content-Length
// values, Content-Length together with Transfer-Encoding, a transfer
// coding other than chunked, Transfer-Encoding on an HTTP/1.0 response.
func responseFraming(h http.Header, method string, code, minor int) (framing, error) {
	f := framing{length: -1}
	conn := h["Connection"]
	if minor == 0 {
		f.close = !hasToken(conn, "keep-alive")
	} else {
		f.close = hasToken(conn, "close")
	}
	cls, hasCL := h["Content-Length"]
	tes, hasTE := h["Transfer-Encoding"]
	if hasCL {
		first := cls[0]
		for _, v := range cls[1:] {
			if v != first {
				return f, protoErr("conflicting Content-Length values %s and %s", quote(first), quote(v))
			}
		}
		n, ok := parseLength(first)
		if !ok {
			return f, protoErr("bad Content-Length %s", quote(first))
		}
		f.length = n
	}
	if hasTE {
		if hasCL {
			return f, protoErr("both Content-Length and Transfer-Encoding")
		}
		if minor == 0 {
			return f, protoErr("Transfer-Encoding in an HTTP/1.0 response")
		}
		if len(tes) != 1 || !strings.EqualFold(tes[0], "chunked") {
			return f, protoErr("unsupported Transfer-Encoding %s", quote(strings.Join(tes, ", ")))
		}
		f.chunked, f.te = true, true
	}
	if method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified {
		f.noBody, f.chunked = true, false
		return f, nil
	}
	if !f.chunked && f.length < 0 {
		f.close = true // the body ends when the app closes the connection
	}
	return f, nil
}

// parseLength parses a Content-Length: decimal digits only, no sign, no
// list, at most 2^63-1.
func parseLength(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
		if n < 0 {
			return 0, false
		}
	}
	return n, true
}

// hasToken reports whether a comma-separated list field names token.
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(trimBlanks(t), token) {
				return true
			}
		}
	}
	return false
}

// declaredTrailers is resp.Trailer as net/http fills it before the body:
// the names the Trailer field announces, with nil values; nil if none.
func declaredTrailers(h http.Header) (http.Header, error) {
	vv, ok := h["Trailer"]
	if !ok {
		return nil, nil
	}
	h.Del("Trailer")
	t := make(http.Header)
	for _, v := range vv {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			name = trimBlanks(name)
			if name == "" {
				continue
			}
			if !httpguts.ValidHeaderFieldName(name) {
				return nil, protoErr("invalid name %s in Trailer", quote(name))
			}
			switch name = textproto.CanonicalMIMEHeaderKey(name); name {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				return nil, protoErr("bad trailer key %s", quote(name))
			}
			t[name] = nil
		}
	}
	return t, nil
}

// parseChunkSize parses a chunk-size line (without its line end): hex
// digits, optional blanks, optional extensions (ignored, but without
// control characters).
func parseChunkSize(line []byte) (int64, error) {
	i := 0
	var n int64
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i >= 15 { // 16 hex digits would overflow int64's sign
			return 0, protoErr("chunk size too large")
		}
		n = n<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, protoErr("bad chunk size line %s", quote(string(line)))
	}
	for _, c := range line[i:] {
		if c != '\t' && (c < ' ' || c == 0x7f) {
			return 0, protoErr("bad chunk size line %s", quote(string(line)))
		}
	}
	if ext := bytes.TrimLeft(line[i:], " \t"); len(ext) > 0 && ext[0] != ';' {
		return 0, protoErr("bad chunk size line %s", quote(string(line)))
	}
	return n, nil
}

// errNoResponse wraps a read failure before the first byte of a
// response: on a reused connection it is the keep-alive race (the app
// closed the idle connection as the request went out), which is safe to
// retry for a request that can be replayed.
type errNoResponse struct{ err error }

func (e errNoResponse) Error() string {
	return "h1client: connection closed before a response arrived: " + e.err.Error()
}
func (e errNoResponse) Unwrap() error { return e.err }

var errUnexpected101 = protoErr("101 Switching Protocols to a request that asked for no upgrade")

// headReader reads a response head. hook is called for every interim
// (1xx) response; when hook is not nil, each head gets limit bytes (as
// net/http does when the 1xx responses are delivered to the caller),
// else all heads share them.
type headReader struct {
	br      *bufio.Reader
	scratch []byte // reused across heads of one connection
	limit   int
}

// read reads the final response head to a request with the given
// method. It returns the response with its header, status and framing;
// the caller sets Body.
func (r *headReader) read(method string, hook func(int, textproto.MIMEHeader) error) (*http.Response, framing, error) {
	budget := r.limit
	first := true
	for {
		buf, err := readLines(r.br, r.scratch[:0], budget)
		if cap(buf) <= 64<<10 {
			r.scratch = buf[:0]
		}
		if err != nil {
			if first && len(buf) == 0 {
				return nil, framing{}, errNoResponse{err}
			}
			if tl, ok := err.(*HeaderTooLargeError); ok {
				tl.Limit = r.limit
				return nil, framing{}, tl
			}
			return nil, framing{}, fmt.Errorf("h1client: reading response header: %w", err)
		}
		first = false
		s := string(buf) // one allocation for every name, value and the status
		line, rest, _ := nextLine(s)
		code, minor, status, err := parseStatusLine(line)
		if err != nil {
			return nil, framing{}, err
		}
		h := make(http.Header, strings.Count(rest, "\n"))
		if err := parseFields(rest, h); err != nil {
			return nil, framing{}, err
		}
		if code < 200 {
			if code == http.StatusSwitchingProtocols {
				return nil, framing{}, errUnexpected101
			}
			if hook != nil {
				if err := hook(code, textproto.MIMEHeader(h)); err != nil {
					return nil, framing{}, err
				}
			} else {
				budget -= len(buf)
			}
			continue
		}
		f, err := responseFraming(h, method, code, minor)
		if err != nil {
			return nil, framing{}, err
		}
		resp := &http.Response{
			Status:        status,
			StatusCode:    code,
			Proto:         line[:8],
			ProtoMajor:    1,
			ProtoMinor:    minor,
			Header:        h,
			ContentLength: f.length,
			Close:         f.close,
		}
		if f.noBody {
			if method != http.MethodHead {
				resp.ContentLength = 0
			}
		} else if f.chunked {
			resp.TransferEncoding = []string{"chunked"}
		}
		if f.te { // as net/http: the Trailer field goes with chunked only
			if resp.Trailer, err = declaredTrailers(h); err != nil {
				return nil, framing{}, err
			}
		}
		delete(h, "Transfer-Encoding") // chunked (else refused): the framing, not the app's
		if hasToken(h["Connection"], "close") {
			delete(h, "Connection") // as net/http: Close says it
		}
		return resp, f, nil
	}
}

var errBadChunkEnd = protoErr("chunk data not followed by CRLF")

// zeroChunkBuffered reports whether buf (bytes already read from the
// connection) holds, after the CRLF that ends a chunk's data if
// needCRLF, a complete last chunk: a zero size line and the trailer
// section up to its empty line. Then the body can end with the data read
// just before, in one Read, without waiting on the network. Only
// completeness is judged here; the real parse validates.
func zeroChunkBuffered(buf []byte, needCRLF bool) bool {
	if needCRLF {
		if len(buf) < 2 {
			return false
		}
		buf = buf[2:]
	}
	i := bytes.IndexByte(buf, '\n')
	if i < 0 {
		return false
	}
	line := bytes.TrimRight(buf[:i], "\r")
	if len(line) == 0 || line[0] != '0' {
		return false
	}
	if n, err := parseChunkSize(line); err != nil || n != 0 {
		return false
	}
	buf = buf[i+1:]
	for {
		i = bytes.IndexByte(buf, '\n')
		if i < 0 {
			return false
		}
		if i == 0 || (i == 1 && buf[0] == '\r') {
			return true
		}
		buf = buf[i+1:]
	}
}

var errBodyClosed = errors.New("h1client: read on closed response body")
