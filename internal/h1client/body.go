package h1client

import (
	"bufio"
	"io"
	"net/http"
	"sync/atomic"
)

// Body states: the body is being read; it ended and its connection went
// on (to the pool, or closed if not reusable); it was closed early or
// failed, and its connection was closed.
const (
	bodyReading int32 = iota
	bodyDone
	bodyAborted
)

// body is a response body read straight from the connection's buffer
// by the caller's goroutine. At its end (the last byte, the last chunk
// and the trailers) the connection is released before Read returns
// io.EOF, together with the last bytes when they arrived together (as
// net/http's body does; bridge.copyFlushing relies on it to skip a
// flush). Close before the end closes the connection, as net/http does.
type body struct {
	cn      *conn // nil in tests of the parser alone
	br      *bufio.Reader
	resp    *http.Response // Trailer is filled at the end of a chunked body
	hr      *headReader    // for the trailer section
	chunked bool
	toClose bool  // until the app closes the connection
	n       int64 // bytes left: of the body, or of the current chunk
	crlf    bool  // chunked: the CRLF after a chunk's data is still to read
	err     error // sticky: io.EOF at the end, else the failure
	state   atomic.Int32
}

func (b *body) Read(p []byte) (int, error) {
	if b.state.Load() == bodyAborted {
		return 0, errBodyClosed
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch {
	case b.toClose:
		n, err := b.br.Read(p)
		if err == io.EOF {
			b.end(false)
			return n, io.EOF
		}
		if err != nil {
			return n, b.fail(err)
		}
		return n, nil
	case b.chunked:
		return b.readChunked(p)
	default:
		if int64(len(p)) > b.n {
			p = p[:b.n]
		}
		n, err := b.br.Read(p)
		b.n -= int64(n)
		if b.n == 0 {
			b.end(true)
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return n, b.fail(err)
		}
		return n, nil
	}
}

func (b *body) readChunked(p []byte) (int, error) {
	if b.n == 0 {
		done, err := b.nextChunk()
		if err != nil {
			return 0, b.fail(err)
		}
		if done {
			b.end(true)
			return 0, io.EOF
		}
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if b.n == 0 {
		b.crlf = true
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, b.fail(err)
	}
	// The body's end already here: return it with these bytes.
	if b.n == 0 && b.br.Buffered() > 0 {
		buf, _ := b.br.Peek(b.br.Buffered())
		if zeroChunkBuffered(buf, true) {
			if _, err := b.nextChunk(); err != nil {
				return n, b.fail(err)
			}
			b.end(true)
			return n, io.EOF
		}
	}
	return n, nil
}

// nextChunk reads the CRLF ending the previous chunk's data, if due, and
// the next chunk-size line; for the last chunk, the trailer section too.
// done is true after the last chunk.
func (b *body) nextChunk() (done bool, err error) {
	if b.crlf {
		var two [2]byte
		if _, err := io.ReadFull(b.br, two[:]); err != nil {
			return false, unexpected(err)
		}
		if two != [2]byte{'\r', '\n'} {
			return false, errBadChunkEnd
		}
		b.crlf = false
	}
	line, err := b.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxChunkLine {
		return false, protoErr("chunk size line too long")
	}
	if err != nil {
		return false, unexpected(err)
	}
	// "\r\n" only: a bare LF here is what request smuggling plays on
	// (net/http refuses it too).
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return false, protoErr("chunk size line ends with a bare LF")
	}
	line = line[:len(line)-2]
	size, err := parseChunkSize(line)
	if err != nil {
		return false, err
	}
	if size > 0 {
		b.n = size
		return false, nil
	}
	return true, b.readTrailers()
}

func (b *body) readTrailers() error {
	buf, err := readLines(b.br, b.hr.scratch[:0], b.hr.limit)
	if cap(buf) <= 64<<10 {
		b.hr.scratch = buf[:0]
	}
	if err != nil {
		if _, ok := err.(*HeaderTooLargeError); ok {
			return err
		}
		return unexpected(err)
	}
	// CRLF only, as for chunk lines: net/http refuses a trailer section
	// that does not end in CRLF CRLF.
	for i, c := range buf {
		if c == '\n' && (i == 0 || buf[i-1] != '\r') {
			return protoErr("trailer section with a bare LF")
		}
	}
	if len(buf) == 2 { // no trailer fields: only the empty line
		return nil
	}
	t := make(http.Header)
	if err := parseFields(string(buf), t); err != nil {
		return err
	}
	if b.resp.Trailer == nil {
		b.resp.Trailer = make(http.Header, len(t))
	}
	for k, vv := range t {
		b.resp.Trailer[k] = vv
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// end marks the body complete; reusable says whether the connection may
// carry another request (not after a body delimited by its close).
func (b *body) end(reusable bool) {
	b.err = io.EOF
	if b.state.CompareAndSwap(bodyReading, bodyDone) && b.cn != nil {
		b.cn.readDone(reusable)
	}
}

// fail makes err the body's result and closes the connection. A failure
// caused by the request's context ending reports that.
func (b *body) fail(err error) error {
	if b.cn != nil {
		err = b.cn.contextErr(err)
	}
	b.err = err
	if b.state.CompareAndSwap(bodyReading, bodyAborted) && b.cn != nil {
		b.cn.readDone(false)
	}
	return err
}

// Close releases the body. Before its end, the rest is not read: the
// connection is closed (what is left may be long or endless).
func (b *body) Close() error {
	if b.state.CompareAndSwap(bodyReading, bodyAborted) && b.cn != nil {
		b.cn.readDone(false)
	}
	return nil
}
