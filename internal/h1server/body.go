package h1server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Body errors. A malformed chunked body fails the read: the handler
// sees the error (the forward aborts) and the connection is closed,
// since nothing after it can be framed.
var (
	errChunkLine     = errors.New("h1server: malformed chunk-size line")
	errChunkData     = errors.New("h1server: chunk data not followed by CRLF")
	errTrailers      = errors.New("h1server: malformed trailer section")
	errBodyClosed    = errors.New("http: invalid Read on closed Body")
	errMaxChunkLine  = 4096
	maxTrailerBytes  = 64 << 10
	maxPostHandlerRd = 256 << 10 // net/http's maxPostHandlerReadBytes
)

// body is a request body read from the connection's buffer by whoever
// reads r.Body. At its end (io.EOF) onEOF runs once, before io.EOF is
// returned: the connection may then start watching for the app's
// disconnect.
type body struct {
	mu      sync.Mutex
	br      *bufio.Reader
	req     *http.Request // Trailer is filled at the end of a chunked body
	chunked bool
	n       int64 // bytes left: of the body, or of the current chunk
	crlf    bool  // chunked: the CRLF after a chunk's data is still to read
	err     error // sticky: io.EOF at the end, else the failure
	closed  bool
	onEOF   func()
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	return b.readLocked(p)
}

func (b *body) readLocked(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if b.chunked && b.n == 0 {
		if done, err := b.nextChunk(); err != nil {
			return 0, b.fail(err)
		} else if done {
			return 0, b.eof()
		}
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, b.fail(err)
	}
	if b.n == 0 && !b.chunked {
		return n, b.eof()
	}
	return n, nil
}

func (b *body) eof() error {
	b.err = io.EOF
	if b.onEOF != nil {
		b.onEOF()
	}
	return io.EOF
}

func (b *body) fail(err error) error {
	b.err = err
	return err
}

// nextChunk reads the CRLF ending the previous chunk's data and the next
// chunk-size line, and at the last chunk the trailer section.
func (b *body) nextChunk() (done bool, err error) {
	if b.crlf {
		c1, err1 := b.br.ReadByte()
		c2, err2 := b.br.ReadByte()
		if err := errors.Join(err1, err2); err != nil {
			return false, unexpected(err)
		}
		if c1 != '\r' || c2 != '\n' {
			return false, errChunkData
		}
	}
	line, err := readLine(b.br, errMaxChunkLine)
	if err != nil {
		if err == errLineTooLong {
			err = errChunkLine
		}
		return false, err
	}
	size, err := parseChunkSize(line)
	if err != nil {
		return false, err
	}
	if size == 0 {
		return true, b.readTrailers()
	}
	b.n, b.crlf = size, true
	return false, nil
}

// readTrailers reads the trailer section after the last chunk into
// r.Trailer, as net/http does.
func (b *body) readTrailers() error {
	total := 0
	for {
		line, err := readLine(b.br, maxTrailerBytes-total)
		if err != nil {
			if err == errLineTooLong {
				err = errTrailers
			}
			return err
		}
		total += len(line) + 2
		if len(line) == 0 {
			return nil
		}
		s := string(line)
		colon := strings.IndexByte(s, ':')
		if colon <= 0 {
			return errTrailers
		}
		name, value := s[:colon], trimBlanks(s[colon+1:])
		for i := 0; i < len(name); i++ {
			if !isToken(name[i]) {
				return errTrailers
			}
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return errTrailers
			}
		}
		switch name = http.CanonicalHeaderKey(name); name {
		case "Transfer-Encoding", "Content-Length", "Trailer", "Host":
			return errTrailers
		}
		if b.req.Trailer == nil {
			b.req.Trailer = make(http.Header)
		}
		b.req.Trailer.Add(name, value)
	}
}

var errLineTooLong = errors.New("h1server: line too long")

// readLine reads one CRLF-terminated line (without it) of at most limit
// bytes. The slice is valid until the next read.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > limit+2 {
		return nil, errLineTooLong
	}
	if err != nil {
		return nil, unexpected(err)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errNotCRLFBody
	}
	return line[:len(line)-2], nil
}

var errNotCRLFBody = errors.New("h1server: line in chunked body not terminated by CRLF")

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseChunkSize parses a chunk-size line: 1-16 hex digits, then
// optionally ";" and extensions without control bytes.
func parseChunkSize(line []byte) (int64, error) {
	var n uint64
	i := 0
	for ; i < len(line); i++ {
		d := unhex(line[i])
		if d < 0 {
			break
		}
		if i == 16 {
			return 0, errChunkLine
		}
		n = n<<4 | uint64(d)
	}
	if i == 0 || n > 1<<62 {
		return 0, errChunkLine
	}
	if i < len(line) {
		if line[i] != ';' {
			return 0, errChunkLine
		}
		for _, c := range line[i+1:] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return 0, errChunkLine
			}
		}
	}
	return int64(n), nil
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

// Close marks the body closed; the server drains what is left (up to
// net/http's limit) when the handler returns.
func (b *body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// drain reads what the handler left of the body, up to net/http's limit,
// and reports whether the connection can carry another request.
func (b *body) drain() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == io.EOF {
		return true
	}
	if b.err != nil {
		return false
	}
	if !b.chunked && b.n > int64(maxPostHandlerRd) {
		return false
	}
	var buf [512]byte
	read := 0
	for read <= maxPostHandlerRd {
		n, err := b.readLocked(buf[:])
		read += n
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// chunksValidSoFar checks the chunked framing of the body bytes that
// arrived with the head (b), as far as they go: a malformed chunk line
// or chunk data not followed by CRLF there sends the request to the
// fallback, whose inspector refuses it with 400 before the handler runs
// (as it did before this server). Later framing errors fail the body's
// Read instead.
func chunksValidSoFar(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return len(b) <= errMaxChunkLine
		}
		if i == 0 || b[i-1] != '\r' {
			return false
		}
		size, err := parseChunkSize(b[:i-1])
		if err != nil {
			return false
		}
		if size == 0 {
			return true // the trailer section is checked as it is read
		}
		b = b[i+1:]
		if int64(len(b)) < size+2 {
			return int64(len(b)) <= size || b[size] == '\r'
		}
		if b[size] != '\r' || b[size+1] != '\n' {
			return false
		}
		b = b[size+2:]
	}
}
