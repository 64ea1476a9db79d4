package h1client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// conn is one keep-alive connection to an app. It carries one exchange
// at a time; the exchange has up to two halves: reading the response
// (the caller's goroutine, then whoever reads the body) and, for a
// request with a body, writing that body (a goroutine of its own, so a
// response can arrive while the body is still being sent). The half that
// ends last hands the connection back to the pool, or closes it.
type conn struct {
	cl     *Client
	nc     net.Conn
	key    string
	br     *bufio.Reader
	bw     *bufio.Writer
	hr     headReader
	idleAt time.Time
	reused bool
	abortF func() // conn.abort as a func value made once, for context.AfterFunc
	peek   *peeker

	// The exchange in progress.
	// state is the exchange's generation (high 32 bits) and the number
	// of its halves not yet ended (low 32 bits; poisoned when the write
	// grace ran out, so that it never reaches 0).
	state      atomic.Uint64
	gen        uint32
	broken     atomic.Bool   // closed, or not to be reused
	closeAfter bool          // a Connection: close either way; set before the read half ends
	stop       func() bool   // stops the context watch; nil if the context cannot end
	wdone      chan struct{} // closed when the write half has ended
	ctx        context.Context
	mu         sync.Mutex
	writeErr   error // the body writer's failure
}

func newConn(cl *Client, nc net.Conn, key string) *conn {
	cn := &conn{cl: cl, nc: nc, key: key, br: bufio.NewReaderSize(nc, 4<<10), bw: bufio.NewWriterSize(nc, 4<<10)}
	cn.hr = headReader{br: cn.br, limit: cl.cfg.MaxResponseHeaderBytes}
	cn.abortF = cn.abort
	cn.peek = newPeeker(nc)
	return cn
}

// abort closes the connection for good: I/O in flight on it fails.
func (cn *conn) abort() {
	cn.broken.Store(true)
	cn.nc.Close()
}

// start begins an exchange with halves halves (1 or 2) under ctx: the
// context ending closes the connection, which aborts a blocked write or
// read in either half.
func (cn *conn) start(ctx context.Context, halves int32) {
	cn.gen++
	cn.state.Store(uint64(cn.gen)<<32 | uint64(halves))
	cn.wdone = nil
	if halves == 2 {
		cn.wdone = make(chan struct{})
	}
	cn.ctx = ctx
	cn.closeAfter = false
	cn.writeErr = nil
	cn.stop = nil
	if ctx.Done() != nil {
		cn.stop = context.AfterFunc(ctx, cn.abortF)
	}
}

// writeGrace is how long a request body may still be sent after the
// response to it has ended, before the connection is closed rather
// than reused (net/http's value).
const writeGrace = 50 * time.Millisecond

const poisoned = 1 << 31

// readDone ends the read half.
func (cn *conn) readDone(reusable bool) {
	if !reusable {
		cn.abort()
	}
	// Past the decrement the connection may be another exchange's
	// (the writer ended and pooled it): what this one needs is read now.
	wdone, stop := cn.wdone, cn.stop
	v := cn.state.Add(^uint64(0)) // minus one half
	if uint32(v) == 0 {
		cn.finish()
		return
	}
	if reusable {
		// The response is complete and the body writer is still on:
		// usually about to end (its last write done), but if the app
		// answered without reading the body, it may never. As net/http
		// does, the end of the body waits for it a little, so that the
		// connection is back in the pool when the caller sees io.EOF;
		// then closes the connection under it.
		t := time.NewTimer(writeGrace)
		select {
		case <-wdone:
		case <-t.C:
		}
		t.Stop()
		if cn.state.CompareAndSwap(v, v|poisoned) {
			cn.abort()
			if stop != nil {
				stop()
			}
		}
	}
}

// writeDone ends the write half.
func (cn *conn) writeDone(err error) {
	if err != nil {
		cn.mu.Lock()
		cn.writeErr = err
		cn.mu.Unlock()
		cn.abort()
	}
	if uint32(cn.state.Add(^uint64(0))) == 0 {
		cn.finish()
	}
}

// finish runs when both halves have ended: the connection goes back to
// the pool if it can carry another request.
func (cn *conn) finish() {
	watched := cn.stop == nil || cn.stop()
	cn.ctx = nil
	if !watched || cn.broken.Load() || cn.closeAfter || cn.br.Buffered() > 0 {
		// Bytes after the response are not a response to anything.
		cn.abort()
		return
	}
	cn.cl.put(cn)
}

// contextErr turns an I/O failure caused by the exchange's context
// ending (the watch closed the connection) into that context's error.
func (cn *conn) contextErr(err error) error {
	if ctx := cn.ctx; ctx != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("h1client: %w (%v)", ctx.Err(), err)
	}
	return err
}

// failure is what a failed read half reports: the body writer's error
// first if it had one (it closed the connection under the reader).
func (cn *conn) failure(err error) error {
	cn.mu.Lock()
	werr := cn.writeErr
	cn.mu.Unlock()
	if werr != nil {
		err = werr
	}
	return cn.contextErr(err)
}

// outgoing is a request as it will be written.
type outgoing struct {
	method     string
	uri        string
	host       string
	header     http.Header
	body       io.ReadCloser // nil: none
	length     int64         // of body; -1: chunked
	trailer    http.Header
	closeAfter bool
}

// writeHead puts the request head in bw.
func writeHead(bw *bufio.Writer, o *outgoing) error {
	bw.WriteString(o.method)
	bw.WriteByte(' ')
	bw.WriteString(o.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(o.host)
	bw.WriteString("\r\n")
	if err := writeFields(bw, o.header, "header", true); err != nil {
		return err
	}
	switch {
	case o.body == nil:
		// As net/http: GET and HEAD without a body say nothing, other
		// methods say their body is empty (many servers expect it).
		if o.method != http.MethodGet && o.method != http.MethodHead {
			bw.WriteString("Content-Length: 0\r\n")
		}
	case o.length >= 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), o.length, 10))
		bw.WriteString("\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(o.trailer) > 0 {
			bw.WriteString("Trailer: ")
			first := true
			for k := range o.trailer {
				if !httpguts.ValidHeaderFieldName(k) {
					return fmt.Errorf("h1client: invalid trailer name %q", k)
				}
				if !first {
					bw.WriteByte(',')
				}
				first = false
				bw.WriteString(k)
			}
			bw.WriteString("\r\n")
		}
	}
	if o.closeAfter && !hasToken(o.header["Connection"], "close") {
		bw.WriteString("Connection: close\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// writeFields writes the fields of h, checked as net/http's Transport
// checks them: nothing the caller passes can split the message. skip
// leaves out the fields the client writes itself.
func writeFields(bw *bufio.Writer, h http.Header, what string, skip bool) error {
	for k, vv := range h {
		if skip && skipField(k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("h1client: invalid %s field name %q", what, k)
		}
		for _, v := range vv {
			if skip && v == "" && strings.EqualFold(k, "User-Agent") {
				// net/http's rule: an empty User-Agent means none
				// (httpx.KeepUserAgentAbsent relies on it).
				continue
			}
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("h1client: invalid %s field value for %q", what, k)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(trimBlanks(v))
			bw.WriteString("\r\n")
		}
	}
	return nil
}

// skipField: fields the client writes itself from the request's fields
// (Host, framing), whatever their case in the map.
func skipField(k string) bool {
	switch len(k) {
	case 4:
		return strings.EqualFold(k, "Host")
	case 7:
		return strings.EqualFold(k, "Trailer")
	case 14:
		return strings.EqualFold(k, "Content-Length")
	case 17:
		return strings.EqualFold(k, "Transfer-Encoding")
	}
	return false
}

// inMemory reports whether body is one of the standard library's
// in-memory readers (as net/http's Transport recognises them), whose
// first bytes go out with the head in one write.
func inMemory(body io.Reader) bool {
	switch body.(type) {
	case *bytes.Reader, *bytes.Buffer, *strings.Reader:
		return true
	}
	return false
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeRequest writes the head and the body (the write half). Each piece
// of body is sent as soon as it is read: a request body may be a stream
// the app answers while it goes on (full duplex).
// The caller closes the body.
func (cn *conn) writeRequest(o *outgoing) error {
	if err := writeHead(cn.bw, o); err != nil {
		cn.bw.Reset(cn.nc)
		return err
	}
	if !inMemory(o.body) {
		// The body may be a stream that waits for the app's answer:
		// the app gets the head now (net/http does the same).
		if err := cn.bw.Flush(); err != nil {
			return fmt.Errorf("h1client: writing request: %w", err)
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var sent int64
	for {
		p := buf
		if o.length >= 0 && int64(len(p)) > o.length-sent {
			p = p[:o.length-sent]
		}
		n, rerr := o.body.Read(p)
		if n > 0 {
			sent += int64(n)
			if o.length < 0 {
				cn.bw.Write(strconv.AppendInt(cn.bw.AvailableBuffer(), int64(n), 16))
				cn.bw.WriteString("\r\n")
				cn.bw.Write(p[:n])
				cn.bw.WriteString("\r\n")
			} else {
				cn.bw.Write(p[:n])
			}
		}
		if o.length >= 0 && sent == o.length {
			rerr = io.EOF // the announced length is all that is sent
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("h1client: reading request body: %w", rerr)
		}
		if err := cn.bw.Flush(); err != nil {
			return fmt.Errorf("h1client: writing request body: %w", err)
		}
	}
	if o.length >= 0 && sent < o.length {
		return fmt.Errorf("h1client: request body ended after %d of %d bytes (Content-Length)", sent, o.length)
	}
	if o.length < 0 {
		cn.bw.WriteString("0\r\n")
		if err := writeFields(cn.bw, o.trailer, "trailer", false); err != nil {
			return err
		}
		cn.bw.WriteString("\r\n")
	}
	if err := cn.bw.Flush(); err != nil {
		return fmt.Errorf("h1client: writing request body: %w", err)
	}
	return nil
}
