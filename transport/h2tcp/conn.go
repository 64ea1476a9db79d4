// Package h2tcp is the mesh's fallback transport: HTTP/2 over TLS 1.3 over
// TCP, with the same mutual TLS as the QUIC transport (identity.ServerConfig
// and identity.ClientConfig, its own ALPN). It offers what transport offers
// over QUIC — a Pool of one connection per peer whose connections
// round-trip HTTP requests and open tunnels, a Listener whose connections
// serve an http.Handler and a tunnel handler — with errors in
// transport/meshcode's terms, so proxy/sidecar plugs it in with thin
// adapters (docs/design.md, "The TCP transport").
//
// HTTP requests are HTTP/2 requests. A tunnel is an HTTP/2 CONNECT stream
// to the authority TunnelAuthority whose request body starts with the same
// tunnel header as on QUIC (transport/tunnel), then carries the app's
// bytes: END_STREAM is FIN and RST_STREAM a reset. The response body is
// framed (frame.go) so that the inbound side can half-close and send reset
// codes. Draining is HTTP/2 GOAWAY.
package h2tcp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// ALPN is the application protocol of the TCP transport: not "h2", so that
// an ordinary HTTP/2 client reaching the port is refused at the handshake,
// and not the QUIC transport's, whose connections carry other framing.
const ALPN = "quicmesh-h2/1"

// TunnelAuthority is the :authority of the CONNECT requests that carry
// tunnels; the target is in the tunnel header, as on QUIC.
const TunnelAuthority = "tunnel.quicmesh.invalid"

// watchedConn is the TLS connection under an HTTP/2 client or server
// connection: it knows when it ended and why, which x/net/http2 does not
// tell, and tells a peer that went silent (the HTTP/2 PING health check
// gave up) from one that closed the connection.
type watchedConn struct {
	net.Conn
	silent   time.Duration // silence after which a closed connection counts as an idle timeout
	lastRead atomic.Int64  // unix nanoseconds
	ctx      context.Context
	cancel   context.CancelCauseFunc
}

func newWatchedConn(c net.Conn, silent time.Duration) *watchedConn {
	w := &watchedConn{Conn: c, silent: silent}
	w.ctx, w.cancel = context.WithCancelCause(context.Background())
	w.lastRead.Store(time.Now().UnixNano())
	return w
}

// ConnectionState is the TLS state, for x/net/http2 (which then fills in
// http.Request.TLS).
func (c *watchedConn) ConnectionState() tls.ConnectionState {
	return c.Conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState()
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil {
		c.ended(fmt.Errorf("h2tcp: connection to %s ended: %w", c.RemoteAddr(), err))
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.ended(fmt.Errorf("h2tcp: connection to %s closed: %w", c.RemoteAddr(), net.ErrClosed))
	return c.Conn.Close()
}

// ended records why the connection ended (the first reason wins): an idle
// timeout when the peer had been silent for the health check's whole
// budget, else a closed connection.
func (c *watchedConn) ended(err error) {
	if c.ctx.Err() != nil {
		return
	}
	if silent := time.Since(time.Unix(0, c.lastRead.Load())); c.silent > 0 && silent >= c.silent {
		err = meshcode.Mark(fmt.Errorf("h2tcp: peer %s stopped answering for %v: %w", c.RemoteAddr(), silent.Round(time.Millisecond), err), meshcode.ErrIdleTimeout, meshcode.ErrConnDead)
	} else {
		err = meshcode.Mark(err, meshcode.ErrConnClosed)
	}
	c.cancel(err)
}

// PeerConn is a live HTTP/2 connection to one peer proxy, shared by every
// request and tunnel to it.
type PeerConn struct {
	cc   *http2.ClientConn
	conn *watchedConn
	pool *Pool
	addr string
	peer identity.ID

	active   atomic.Int64
	retiring bool // guarded by pool.mu
	liveness livenessState
}

// Addr is the peer's address as dialled; Peer the identity it proved.
func (pc *PeerConn) Addr() string      { return pc.addr }
func (pc *PeerConn) Peer() identity.ID { return pc.peer }

// Alive reports whether the connection takes new work: not closed, no
// GOAWAY received, stream IDs left. It is false whenever x/net/http2
// would refuse a request as "client conn not usable" (with the pool's
// StrictMaxConcurrentStreams a full connection makes requests wait, it
// does not refuse them), so the pool never hands out a connection that
// would.
func (pc *PeerConn) Alive() bool {
	return pc.conn.ctx.Err() == nil && pc.cc.CanTakeNewRequest()
}

// goneAway reports whether the peer sent GOAWAY (or we started closing
// the connection): unlike a connection out of stream IDs, the peer is
// draining.
func (pc *PeerConn) goneAway() bool { return pc.cc.State().Closing }

// Context ends when the connection does; its cause says why.
func (pc *PeerConn) Context() context.Context { return pc.conn.ctx }

// Begin counts a request or tunnel until end is called.
func (pc *PeerConn) Begin() (end func()) {
	pc.active.Add(1)
	return func() { pc.active.Add(-1) }
}

// Forget stops the pool from handing out the connection.
func (pc *PeerConn) Forget() { pc.pool.Forget(pc) }

// RoundTrip sends req as an HTTP/2 request. Errors are marked as the QUIC
// transport marks them (requestError). A connection that failed the
// request because it no longer takes new work (GOAWAY received, out of
// stream IDs) leaves the pool at once, so that a retry does not get it
// again; one that ended is Pool.watch's to drop (it records why).
func (pc *PeerConn) RoundTrip(req *http.Request) (*http.Response, error) {
	if pc.conn.ctx.Err() != nil {
		// The connection ended after the pool handed it out. x/net may
		// not have seen it yet and would write the request into a dead
		// socket (EPIPE), an error that does not say whether the peer
		// got it; here nothing was sent.
		if req.Body != nil {
			req.Body.Close() // the RoundTripper contract
		}
		return nil, pc.requestError(fmt.Errorf("h2tcp: request to %s: %w", pc.addr, errEndedBeforeRequest))
	}
	var rec *recordedBody
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength <= maxRecordedBody {
		rec = &recordedBody{rc: req.Body, size: -1}
		if req.ContentLength > 0 { // 0 with a body: unknown
			rec.size = req.ContentLength
		}
		req = req.WithContext(req.Context())
		req.Body = rec
	}
	resp, err := pc.cc.RoundTrip(req)
	if err != nil {
		if pc.conn.ctx.Err() == nil && !pc.Alive() {
			pc.Forget()
		}
		raw := err
		err = pc.requestError(fmt.Errorf("h2tcp: request to %s: %w", pc.addr, err))
		if body := rec.whole(); body != nil && neverSeen(raw) {
			err = &unsentBodyError{err: err, body: body}
		}
		return nil, err
	}
	return resp, nil
}

// maxRecordedBody bounds the request body RoundTrip keeps a copy of
// while x/net sends it (recordedBody).
const maxRecordedBody = 16 << 10

// recordedBody keeps a copy of what x/net reads of a request body, up
// to maxRecordedBody: x/net reads the body as soon as the request's
// HEADERS are written, so a request it then fails because the stream
// was beyond the peer's GOAWAY (the peer never saw it) may have
// consumed a body the caller cannot read again. The copy lets the
// caller send it again elsewhere (unsentBodyError).
type recordedBody struct {
	rc   io.ReadCloser
	size int64 // the request's ContentLength: -1 unknown
	mu   sync.Mutex
	buf  []byte
	over bool // more than maxRecordedBody was read: no copy
	eof  bool
}

func (b *recordedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.mu.Lock()
	if !b.over {
		if len(b.buf)+n > maxRecordedBody {
			b.over, b.buf = true, nil
		} else {
			b.buf = append(b.buf, p[:n]...)
		}
	}
	b.eof = b.eof || err == io.EOF
	b.mu.Unlock()
	return n, err
}

func (b *recordedBody) Close() error { return b.rc.Close() }

// whole returns the body if it was read to its end (EOF, or its
// ContentLength) and copied whole, nil otherwise (or for a nil b).
func (b *recordedBody) whole() []byte {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.over || !b.eof && int64(len(b.buf)) != b.size {
		return nil
	}
	return append([]byte{}, b.buf...) // non-nil for an empty body too
}

// neverSeen reports whether err says the peer never saw the request:
// its stream was beyond the peer's GOAWAY, or refused.
func neverSeen(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == textGotGoAway {
			return true
		}
	}
	se, ok := errors.AsType[http2.StreamError](err)
	return ok && se.Code == http2.ErrCodeRefusedStream
}

// unsentBodyError is a request failure, marked meshcode.ErrNotProcessed,
// after which the caller may have nothing left of the request body to
// send again: UnsentBody returns it, whole (proxy/outbound's retries
// look for the method).
type unsentBodyError struct {
	err  error
	body []byte
}

func (e *unsentBodyError) Error() string      { return e.err.Error() }
func (e *unsentBodyError) Unwrap() error      { return e.err }
func (e *unsentBodyError) UnsentBody() []byte { return e.body }

// x/net/http2 reports these without exported values; their texts are
// pinned by TestRequestErrorKinds.
const (
	textUnusable       = "http2: client conn not usable"
	textGotGoAway      = "http2: Transport received Server's graceful shutdown GOAWAY"
	textClosed         = "http2: client conn is closed"
	textNotEstablished = "http2: client conn could not be established"
)

// errEndedBeforeRequest: the connection had ended before the request
// was handed to it.
var errEndedBeforeRequest = errors.New("the connection had ended before the request was sent")

// requestError marks err with the kinds the proxy's retry policy needs:
// meshcode.ErrNotProcessed when the peer provably did not process the
// request (the stream never started, was beyond the peer's GOAWAY, or was
// refused), meshcode.ErrConnDead and ErrIdleTimeout or ErrConnClosed by
// what ended the connection.
func (pc *PeerConn) requestError(err error) error {
	var kinds []error
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e.Error() {
		case textUnusable, textGotGoAway:
			kinds = append(kinds, meshcode.ErrNotProcessed)
		case textClosed, textNotEstablished:
			kinds = append(kinds, meshcode.ErrNotProcessed, meshcode.ErrConnDead)
		}
	}
	if errors.Is(err, errEndedBeforeRequest) {
		kinds = append(kinds, meshcode.ErrNotProcessed, meshcode.ErrConnDead)
	}
	if se, ok := errors.AsType[http2.StreamError](err); ok && se.Code == http2.ErrCodeRefusedStream {
		kinds = append(kinds, meshcode.ErrNotProcessed)
	}
	if pc.conn.ctx.Err() != nil {
		cause := context.Cause(pc.conn.ctx)
		if errors.Is(cause, meshcode.ErrIdleTimeout) {
			kinds = append(kinds, meshcode.ErrIdleTimeout, meshcode.ErrConnDead)
		} else {
			kinds = append(kinds, meshcode.ErrConnClosed)
		}
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	return meshcode.Mark(err, kinds...)
}
