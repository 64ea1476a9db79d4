// Package h2client is a lean HTTP/2 client with prior knowledge (h2c)
// for the requests a server sidecar sends to the app beside it, gRPC
// first of all. net/http's HTTP/2 client starts a goroutine per request
// (doRequest) that writes the request HEADERS in a write of their own,
// and hands the response over from its read loop through several
// channels; on the server sidecar it was ~37 % of the CPU of a gRPC
// call (docs/benchmarks.md, "Server sidecar, gRPC unary").
//
// Here the calling goroutine encodes and writes the request HEADERS
// (with END_STREAM when there is no body); one reader goroutine per
// connection (readLoop) parses frames and puts response headers, data
// and trailers on their stream, where the caller and then the response
// body's reader pick them up. A request body is written by one goroutine
// per request, so the app may answer before the body ends (bidirectional
// streaming); a unary body that is all there on its first read goes out
// with the HEADERS in one write.
//
// Guarantees (those of the net/http pool it replaces): each stream's
// receive window is Config.StreamWindow and the connection's
// StreamWindow × MaxStreams, so streams whose readers stalled hold only
// their own windows; at most MaxStreams requests per connection (fewer
// if the app's SETTINGS_MAX_CONCURRENT_STREAMS says so), another
// connection beyond; response header sections are bounded; a request
// whose context ends is reset (RST_STREAM CANCEL) and its body reads
// fail; GOAWAY and REFUSED_STREAM retry requests without a body on
// another connection and fail the others with *UnprocessedError; a
// connection that reads nothing for PingAfter is pinged and closed when
// the ack takes longer than PingTimeout.
//
// What the package does not do goes to Config.Fallback (see
// fallbackReason).
package h2client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http2"
)

// Config sets up a Client. Zero values take the defaults.
type Config struct {
	// Dial connects to an app ("tcp", host:port).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// StreamWindow is the receive window of each stream (default 64 KiB,
	// the protocol's own), and so the most response data buffered per
	// request.
	StreamWindow int
	// MaxStreams bounds the requests in flight on one connection
	// (default 100); the connection's receive window is
	// StreamWindow × MaxStreams.
	MaxStreams int
	// MaxResponseHeaderBytes bounds a response header section and a
	// trailer section, as HPACK counts them (default 64 KiB).
	MaxResponseHeaderBytes int
	// PingAfter is how long a connection may read nothing before it is
	// pinged (default 30 s); PingTimeout how long the ack, and the app's
	// first SETTINGS on a new connection, may take (default 15 s).
	PingAfter   time.Duration
	PingTimeout time.Duration
	// IdleTimeout closes a connection without requests for that long,
	// give or take PingAfter (default 90 s).
	IdleTimeout time.Duration
	// Fallback sends what this client does not support (default
	// http.DefaultTransport, which cannot speak h2c: set it).
	Fallback http.RoundTripper
}

// Client is an http.RoundTripper for h2c to local apps.
type Client struct {
	cfg  Config
	pool *Pool[*conn]

	testHookBodyDone func()      // tests: a request body goroutine ends
	testHookReserved func(*conn) // tests: a slot on the connection was reserved
}

// New returns a client.
func New(cfg Config) *Client {
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.StreamWindow <= 0 {
		cfg.StreamWindow = 64 << 10
	}
	if cfg.StreamWindow > maxWindow {
		cfg.StreamWindow = maxWindow
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 100
	}
	if cfg.StreamWindow*cfg.MaxStreams > maxWindow {
		cfg.MaxStreams = maxWindow / cfg.StreamWindow
	}
	if cfg.MaxResponseHeaderBytes <= 0 {
		cfg.MaxResponseHeaderBytes = 64 << 10
	}
	if cfg.PingAfter <= 0 {
		cfg.PingAfter = 30 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 15 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.Fallback == nil {
		cfg.Fallback = http.DefaultTransport
	}
	c := &Client{cfg: cfg}
	c.pool = NewPool(c.dial)
	return c
}

const maxWindow = 1<<31 - 1

// Errors.
var (
	// ErrClosed is the error of requests after or during Close.
	ErrClosed = errors.New("h2client: client closed")
	// ErrBodyClosed is what reading a response body after Close returns.
	ErrBodyClosed  = errors.New("h2client: read on closed response body")
	errPingTimeout = errors.New("h2client: PING not acknowledged in time")
	errIdle        = errors.New("h2client: idle connection closed")
)

// UnprocessedError is the error of a request the app refused before
// processing it (GOAWAY naming a lower stream, REFUSED_STREAM) that
// could not be sent again because its body had been (partly) read.
type UnprocessedError struct{ Reason string }

func (e *UnprocessedError) Error() string {
	return "h2client: the app did not process the request (" + e.Reason + ") and its body was already sent: not retried"
}

// StreamError is a stream the app reset, or one reset for breaking the
// protocol.
type StreamError struct {
	Code   http2.ErrCode
	Remote bool // reset by the app
	Reason string
}

func (e *StreamError) Error() string {
	who := "local"
	if e.Remote {
		who = "app"
	}
	s := "h2client: stream reset (" + who + "): " + e.Code.String()
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// retryable wraps the error of a request the app has not processed.
// bodyUnread is set when the request failed before its stream was
// opened, so nothing of its body was read: it may go on another
// connection even with a body.
type retryable struct {
	reason     string
	err        error
	bodyUnread bool
}

func (e *retryable) Error() string { return e.err.Error() }
func (e *retryable) Unwrap() error { return e.err }

// fallbackReason says why req goes to the fallback transport, or "":
// CONNECT (extended CONNECT included), Upgrade, Expect (which waits for
// the app before sending the body; the inbound side removes it), a
// scheme other than http, credentials in the URL, an address without a
// port, a host that needs IDNA.
func fallbackReason(req *http.Request) string {
	switch {
	case req.URL == nil:
		return "no URL"
	case req.URL.Scheme != "http":
		return "scheme"
	case req.Method == http.MethodConnect:
		return "CONNECT"
	case req.URL.User != nil:
		return "userinfo"
	case req.URL.Port() == "":
		return "no port"
	case len(req.Header["Upgrade"]) > 0:
		return "upgrade"
	case len(req.Header["Expect"]) > 0:
		return "expect"
	case !isASCII(req.Host) || !isASCII(req.URL.Host):
		return "idna"
	}
	return ""
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// RoundTrip sends req on a connection to req.URL.Host with a free slot,
// dialing one when every connection is full, and returns the response
// head; the body streams. It closes req.Body, as RoundTripper must.
func (c *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	if fallbackReason(req) != "" {
		return c.cfg.Fallback.RoundTrip(req)
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		closeBody(req.Body)
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		cc, err := c.pool.Reserve(ctx, req.URL.Host)
		if err != nil {
			closeBody(req.Body)
			return nil, err
		}
		resp, err := cc.roundTrip(req)
		if err == nil {
			return resp, nil
		}
		if r := asRetryable(err); r != nil {
			if hasBody(req) && !r.bodyUnread {
				// The body goroutine may have read from it (and the
				// stream's end closed it).
				return nil, fmt.Errorf("%w: %w", &UnprocessedError{Reason: r.reason}, r.err)
			}
			if attempt < 3 && ctx.Err() == nil {
				continue
			}
			if r.bodyUnread {
				closeBody(req.Body)
			}
		}
		return nil, err
	}
}

func asRetryable(err error) *retryable {
	var r *retryable
	if errors.As(err, &r) {
		return r
	}
	return nil
}

// hasBody reports whether req has a body to send; a request without
// one (nil or http.NoBody) goes out as HEADERS with END_STREAM, with no
// body goroutine and no request side left open. As in net/http's
// client, ContentLength 0 on another body means unknown, not empty
// (gRPC's clients send streams that way); bridge.PrepareOutgoing
// already passes nil for a request that declared an empty body.
func hasBody(req *http.Request) bool { return req.Body != nil && req.Body != http.NoBody }

func closeBody(b interface{ Close() error }) {
	if b != nil && b != http.NoBody {
		b.Close()
	}
}

// Close closes every connection; requests in flight fail.
func (c *Client) Close() { c.pool.Close() }

// lowerHeader returns the HTTP/2 (lower-case) form of a header name.
func lowerHeader(k string) string {
	if v, ok := commonLower[k]; ok {
		return v
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(k)
		}
	}
	return k
}

var commonLower = func() map[string]string {
	m := make(map[string]string)
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Content-Encoding", "Content-Length", "Content-Type", "Cookie", "Date", "Etag",
		"Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout",
		"If-Modified-Since", "If-None-Match", "Last-Modified", "Location", "Origin", "Referer",
		"Server", "Set-Cookie", "Te", "Trailer", "User-Agent", "Vary", "Via",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "Traceparent", "Tracestate",
		"Quicmesh-Peer-Identity",
	} {
		m[k] = strings.ToLower(k)
	}
	return m
}()
