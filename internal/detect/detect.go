// Package detect performs zero-configuration protocol detection on a freshly
// accepted client connection, the way a service-mesh sidecar decides whether
// an application is speaking HTTP/1.x, HTTP/2 with prior knowledge (h2c,
// gRPC) or something else that must be proxied as opaque TCP.
//
// Detect peeks at the first bytes the client sends and hands back a net.Conn
// that replays every byte consumed during detection before reading from the
// underlying connection, so the caller can pass the connection on to an HTTP
// server or a TCP forwarder as if nothing had been read.
//
// Decision rules, applied to the bytes received so far:
//
//   - The complete HTTP/2 client connection preface
//     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4) → HTTP2.
//   - An HTTP/1.x request line (RFC 9112 §3): a method token, one SP, a
//     request-target (visible ASCII or obs-text bytes, no SP or CTL), one SP,
//     exactly "HTTP/1.0" or "HTTP/1.1", then CRLF → HTTP1. Any token is
//     accepted as a method, not only the registered ones. A bare LF line
//     terminator is also recognised (RFC 9112 §2.2 permits this), so such
//     requests reach the HTTP layer, where they can be rejected, instead of
//     bypassing it as opaque TCP.
//   - As soon as the bytes received can no longer be a prefix of either
//     (a TLS ClientHello starting 0x16, binary data, a Redis "PING\r\n" ...)
//     → Opaque, immediately, without waiting for more data.
//   - No byte at all within Config.Timeout (server-speaks-first protocols
//     such as SMTP or MySQL) → Opaque with nothing buffered; this is not an
//     error.
//   - Some bytes, then silence until Config.Timeout, or end of stream (EOF)
//     before a decision → Opaque with the bytes received so far buffered for
//     replay; this is not an error either.
//   - Config.MaxBytes read without a decision → Opaque. In particular an
//     HTTP/1 request line longer than MaxBytes (a huge URL) is classified as
//     Opaque, not HTTP1: the connection still works, it is just proxied at
//     layer 4 without HTTP features. We prefer that to guessing "HTTP/1" from
//     an unterminated line, which would hand arbitrary text protocols to the
//     HTTP parser.
//
// Detect never buffers more than Config.MaxBytes and never blocks for longer
// than Config.Timeout (it uses one absolute read deadline for the whole
// detection, so a client trickling one byte at a time cannot extend it). The
// read deadline is reset to zero before Detect returns. The timeout relies on
// the connection honouring SetReadDeadline, as every net.Conn in the
// standard library does.
package detect

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Protocol is the outcome of detection.
type Protocol int

const (
	// Opaque means the connection must be forwarded as raw TCP. It is the
	// zero value and the answer whenever no HTTP protocol was recognised.
	Opaque Protocol = iota
	// HTTP1 means the client began with an HTTP/1.0 or HTTP/1.1 request line.
	HTTP1
	// HTTP2 means the client sent the HTTP/2 prior-knowledge preface (h2c).
	HTTP2
)

// String returns "opaque", "http/1" or "http/2".
func (p Protocol) String() string {
	switch p {
	case Opaque:
		return "opaque"
	case HTTP1:
		return "http/1"
	case HTTP2:
		return "http/2"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

const (
	// DefaultTimeout is used when Config.Timeout is zero or negative.
	DefaultTimeout = time.Second
	// DefaultMaxBytes is used when Config.MaxBytes is zero or negative.
	DefaultMaxBytes = 4096
)

// Config tunes Detect. The zero value is ready to use.
type Config struct {
	// Timeout bounds how long Detect waits for the client in total. Zero or
	// negative means DefaultTimeout (1s).
	Timeout time.Duration
	// MaxBytes is the most Detect will ever read and buffer. Zero or
	// negative means DefaultMaxBytes (4096). It is honoured literally: with
	// MaxBytes below the 24-byte HTTP/2 preface, HTTP2 can never be detected.
	MaxBytes int
}

func (c Config) withDefaults() (time.Duration, int) {
	timeout, maxBytes := c.Timeout, c.MaxBytes
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	return timeout, maxBytes
}

// maxEmptyReads mirrors io.ReadAtLeast's guard against readers that keep
// returning (0, nil).
const maxEmptyReads = 100

// bufPool holds DefaultMaxBytes scratch buffers; after a decision only the
// bytes actually read are copied out, so a typical request line costs one
// small allocation instead of a 4 KiB one per connection.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, DefaultMaxBytes)
	return &b
}}

// Detect reads from conn until it can tell which protocol the client speaks
// (see the package documentation for the rules) and returns the protocol
// together with a connection that first replays the bytes consumed.
//
// If nothing was consumed, the returned connection is conn itself. Otherwise
// it is a wrapper whose Read yields the buffered bytes first and whose other
// methods delegate to conn; it implements CloseWrite() error exactly when
// conn does, and io.WriterTo / io.ReaderFrom so that io.Copy can still use
// the underlying connection's zero-copy paths.
//
// Timeouts and EOF are not errors (the result is Opaque). A non-nil error
// means conn failed in some other way (reset by peer, deadline not
// supported...); the returned Protocol is then Opaque and the returned
// connection still replays whatever was read, but callers normally just
// close it.
func Detect(conn net.Conn, cfg Config) (Protocol, net.Conn, error) {
	proto, out, _, err := run(conn, cfg, &classifier{})
	return proto, out, err
}

// feeder is an incremental classifier: feed consumes bytes and reports a
// decision once the bytes seen so far determine one.
type feeder interface {
	feed(b []byte) (Protocol, bool)
}

// ending says why run stopped reading.
type ending int

const (
	endDecided ending = iota // the feeder decided
	endEOF                   // the client closed its side first
	endTimeout               // Config.Timeout passed first
	endFull                  // Config.MaxBytes were read first
	endFailed                // a read failed otherwise
)

// run reads from conn into a buffer of at most cfg.MaxBytes until f
// decides or the connection ends, times out or fails, and returns the
// decision (Opaque if none), a connection replaying the bytes read, and
// why it stopped.
func run(conn net.Conn, cfg Config, f feeder) (Protocol, net.Conn, ending, error) {
	timeout, maxBytes := cfg.withDefaults()
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Opaque, conn, endFailed, fmt.Errorf("detect: setting read deadline: %w", err)
	}

	var buf []byte
	var pooled *[]byte
	if maxBytes <= DefaultMaxBytes {
		pooled = bufPool.Get().(*[]byte)
		buf = (*pooled)[:maxBytes]
	} else {
		buf = make([]byte, maxBytes)
	}

	var (
		proto   = Opaque
		end     = endFull
		n       int
		readErr error
		empty   int
	)
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		if m > 0 {
			empty = 0
			p, decided := f.feed(buf[n : n+m])
			n += m
			if decided {
				proto, end = p, endDecided
				if errors.Is(err, io.EOF) {
					readErr = err // remember it for the replay
				}
				break
			}
		}
		if err != nil {
			readErr = err
			break
		}
		if m == 0 {
			if empty++; empty >= maxEmptyReads {
				readErr = io.ErrNoProgress
				break
			}
		}
	}

	var retErr error
	var pendingEOF bool
	switch {
	case readErr == nil:
	case errors.Is(readErr, io.EOF):
		pendingEOF = true
		if end != endDecided {
			end = endEOF
		}
	case isTimeout(readErr):
		// Silence until the deadline: the caller decides what that means.
		end = endTimeout
	default:
		end = endFailed
		retErr = fmt.Errorf("detect: reading from client: %w", readErr)
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil && retErr == nil {
		retErr = fmt.Errorf("detect: clearing read deadline: %w", err)
	}

	var out net.Conn = conn
	if n > 0 {
		out = newReplayConn(conn, buf[:n], pendingEOF)
	}
	if pooled != nil {
		bufPool.Put(pooled)
	}
	return proto, out, end, retErr
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP/1 request-line parser states.
const (
	h1Method = iota
	h1Target
	h1Version
	h1Minor
	h1CR
	h1LF
	h1Dead
)

const h1VersionPrefix = "HTTP/1."

// classifier is an incremental recogniser for the two HTTP prefixes. Its
// decision for an input is a pure function of the bytes, never of how they
// were split into reads: once it decides at byte i, feeding more bytes cannot
// change the answer.
type classifier struct {
	prefaceTracker
	h1    int // h1* state
	h1Len int // length of the current request-line element
}

// prefaceTracker follows the input against the HTTP/2 preface.
type prefaceTracker struct {
	pos    int  // bytes consumed so far
	h2Dead bool // input diverged from the HTTP/2 preface
}

// stepPreface consumes one byte (the caller advances pos) and reports
// whether it completed the preface.
func (p *prefaceTracker) stepPreface(ch byte) bool {
	if p.h2Dead {
		return false
	}
	if ch != preface[p.pos] {
		p.h2Dead = true
		return false
	}
	return p.pos == len(preface)-1
}

// feed consumes b and reports the decision, if one was reached.
func (c *classifier) feed(b []byte) (Protocol, bool) {
	for _, ch := range b {
		if c.stepPreface(ch) {
			return HTTP2, true
		}
		if c.h1 != h1Dead && c.stepH1(ch) {
			return HTTP1, true
		}
		c.pos++
		if c.h2Dead && c.h1 == h1Dead {
			return Opaque, true
		}
	}
	return Opaque, false
}

// stepH1 advances the request-line recogniser by one byte and reports
// whether the request line is now complete.
func (c *classifier) stepH1(ch byte) bool {
	switch c.h1 {
	case h1Method:
		switch {
		case isTchar(ch):
			c.h1Len++
		case ch == ' ' && c.h1Len > 0:
			c.h1, c.h1Len = h1Target, 0
		default:
			c.h1 = h1Dead
		}
	case h1Target:
		switch {
		case ch > ' ' && ch != 0x7f:
			c.h1Len++
		case ch == ' ' && c.h1Len > 0:
			c.h1, c.h1Len = h1Version, 0
		default:
			c.h1 = h1Dead
		}
	case h1Version:
		if ch != h1VersionPrefix[c.h1Len] {
			c.h1 = h1Dead
		} else if c.h1Len++; c.h1Len == len(h1VersionPrefix) {
			c.h1 = h1Minor
		}
	case h1Minor:
		if ch == '0' || ch == '1' {
			c.h1 = h1CR
		} else {
			c.h1 = h1Dead
		}
	case h1CR:
		switch ch {
		case '\r':
			c.h1 = h1LF
		case '\n':
			return true
		default:
			c.h1 = h1Dead
		}
	case h1LF:
		if ch == '\n' {
			return true
		}
		c.h1 = h1Dead
	}
	return false
}

// isTchar reports whether c is an RFC 9110 §5.6.2 token character.
func isTchar(c byte) bool { return httpguts.IsTokenRune(rune(c)) }
