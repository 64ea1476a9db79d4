package detect

import (
	"errors"
	"net"
)

// ErrNoDecision is returned by DetectServer when Config.Timeout passed
// before the bytes received proved anything: the connection may be a slow
// HTTP client, so it must be neither spliced raw nor kept waiting.
var ErrNoDecision = errors.New("detect: no decision before the timeout")

// DetectServer classifies the first bytes of a connection that is about to
// be delivered to a local app that may speak HTTP. Detect's rules suit the
// client side, where calling HTTP "opaque" only loses HTTP features; here
// the same mistake would hand raw bytes to an HTTP app past every HTTP
// check (header stripping, identity, smuggling guard, header timeout), so
// DetectServer fails closed: it answers Opaque only when no lenient
// HTTP/1 parser could take the bytes for the start of a request, and
// HTTP1 whenever one might, leaving it to the caller's strict HTTP server
// to accept or refuse the request.
//
// Rules, applied to the bytes received so far:
//
//   - The complete HTTP/2 preface → HTTP2. While the bytes are still a
//     prefix of the preface, no other decision is taken; if they stop
//     there, the rules below decide ("PRI * HTTP/2.0" is request-line
//     shaped: HTTP1).
//   - Leading bytes that lenient parsers skip before a request line are
//     skipped: CR, LF, SP, HTAB, VT, FF, 0x1C–0x1F, 0x85, 0xA0 (nginx and
//     Node skip empty lines; Python's str.split treats all of these as
//     whitespace).
//   - The first other byte is not an RFC 9110 token character → Opaque
//     (TLS, most binary protocols). No parser accepts a method that
//     starts otherwise.
//   - A run of visible ASCII (the method, as a lenient parser sees it)
//     followed by a whitespace byte (SP, HTAB, VT, FF, 0x1C–0x1F, 0x85,
//     0xA0, or CR not followed by LF) → HTTP1: the line is shaped like a
//     request line, whatever its target and version ("GET  / HTTP/1.2",
//     "get foo", "GET / http/1.1" all go to the HTTP server).
//   - The run followed by LF, CRLF or any other byte → Opaque: a one-word
//     line ("PING", "*1" in RESP, "SSH-2.0-...") or binary data is not a
//     request line to any parser.
//   - End of stream before a decision → Opaque: without a request-target
//     nothing can follow that a parser would read as header fields.
//   - Config.MaxBytes read without a decision → HTTP1 (the HTTP server
//     refuses what it cannot parse).
//   - Config.Timeout without a decision (silence, or a method that never
//     ends) → Opaque and ErrNoDecision; the caller must close the
//     connection.
//
// Like Detect it never reads more than Config.MaxBytes, never blocks past
// Config.Timeout, and returns a connection that replays what it consumed.
func DetectServer(conn net.Conn, cfg Config) (Protocol, net.Conn, error) {
	cl := &serverClassifier{}
	proto, out, end, err := run(conn, cfg, cl)
	switch {
	case err != nil:
		return Opaque, out, err
	case end != endDecided && cl.decided:
		// A prefix of the HTTP/2 preface, cut short: the request line
		// it starts with is still one.
		return cl.verdict, out, nil
	case end == endTimeout:
		return Opaque, out, ErrNoDecision
	case end == endFull:
		return HTTP1, out, nil
	}
	return proto, out, nil
}

// serverClassifier states for the lenient HTTP/1 side.
const (
	srvSkip   = iota // before the first significant byte
	srvMethod        // inside the first word
	srvCR            // a CR right after the first word
)

// serverClassifier is DetectServer's incremental recogniser; like
// classifier, its decision is a pure function of the bytes.
type serverClassifier struct {
	prefaceTracker
	st int
	// verdict of the HTTP/1 side, held back while the bytes are still a
	// prefix of the HTTP/2 preface ("PRI " is request-line shaped).
	verdict Protocol
	decided bool
}

func (c *serverClassifier) feed(b []byte) (Protocol, bool) {
	for _, ch := range b {
		if c.stepPreface(ch) {
			return HTTP2, true
		}
		if !c.decided {
			c.verdict, c.decided = c.step(ch)
		}
		c.pos++
		if c.decided && c.h2Dead {
			return c.verdict, true
		}
	}
	return Opaque, false
}

func (c *serverClassifier) step(ch byte) (Protocol, bool) {
	switch c.st {
	case srvSkip:
		switch {
		case isLenientSpace(ch) || ch == '\r' || ch == '\n':
		case isTchar(ch):
			c.st = srvMethod
		default:
			return Opaque, true
		}
	case srvMethod:
		switch {
		case ch > ' ' && ch < 0x7f:
		case ch == '\r':
			c.st = srvCR
		case isLenientSpace(ch):
			return HTTP1, true
		default: // LF, NUL and other controls, DEL, other high bytes
			return Opaque, true
		}
	case srvCR:
		if ch == '\n' {
			return Opaque, true
		}
		return HTTP1, true
	}
	return Opaque, false
}

// isLenientSpace reports whether some HTTP/1 parser in use treats ch as
// whitespace between request-line elements (CR and LF excepted).
func isLenientSpace(ch byte) bool {
	switch ch {
	case ' ', '\t', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0:
		return true
	}
	return false
}
