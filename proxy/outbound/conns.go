package outbound

import (
	"context"
	"net"
	"net/http"
	"sync"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/h1server"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// connTracker knows every open app connection, whatever serves it (the
// HTTP/1 server, the HTTP/2 server, a tunnel, a hijacking CONNECT), from
// Accept until it is closed: Close resets them all and waits for them.
type connTracker struct {
	mu      sync.Mutex
	conns   map[*trackedConn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func (t *connTracker) init() { t.conns = make(map[*trackedConn]struct{}) }

// track wraps c so that closing it, by whoever owns it by then, ends its
// tracking. It also counts the goroutine that serves c, which calls
// served when it returns. It fails once the tracker is closing.
func (t *connTracker) track(c net.Conn) (net.Conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return nil, false
	}
	tc := &trackedConn{Conn: c, t: t}
	t.conns[tc] = struct{}{}
	t.wg.Add(2)
	if cw, ok := c.(closeWriter); ok {
		return &trackedConnCW{tc, cw}, true
	}
	return tc, true
}

func (t *connTracker) untrack(tc *trackedConn) {
	t.mu.Lock()
	delete(t.conns, tc)
	t.mu.Unlock()
	t.wg.Done()
}

// served ends the count of a connection's serving goroutine.
func (t *connTracker) served() { t.wg.Done() }

// resetAll stops tracking new connections and resets the open ones.
func (t *connTracker) resetAll() {
	t.mu.Lock()
	t.closing = true
	open := make([]*trackedConn, 0, len(t.conns))
	for c := range t.conns {
		open = append(open, c)
	}
	t.mu.Unlock()
	for _, c := range open {
		splice.Reset(c)
	}
}

// wait returns once every tracked connection is closed and its serving
// goroutine has returned.
func (t *connTracker) wait() { t.wg.Wait() }

type closeWriter interface{ CloseWrite() error }

// trackedConn is an app connection known to a connTracker until closed.
type trackedConn struct {
	net.Conn
	t    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.t.untrack(c) })
	return err
}

// NetConn returns the accepted connection (for socket options).
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// trackedConnCW is a trackedConn over a connection with a write half to
// close, so that tunnels can still end the app's stream with a FIN.
type trackedConnCW struct {
	*trackedConn
	cw closeWriter
}

func (c *trackedConnCW) CloseWrite() error { return c.cw.CloseWrite() }

// serveConn classifies one accepted app connection and hands it to what
// serves its protocol.
func (p *Proxy) serveConn(conn net.Conn, front *httpFront, service string) {
	if front == nil {
		p.tcp.serveTCP(conn, target{service: service, authority: service})
		return
	}
	proto, dconn, err := detect.Detect(conn, p.cfg.Detect)
	if err != nil {
		p.log.Debug("protocol detection failed", "client", conn.RemoteAddr().String(), "error", err)
		splice.Reset(conn)
		return
	}
	switch {
	case proto == detect.HTTP1 || proto == detect.HTTP2:
		front.serve(dconn, proto)
	case service == "":
		p.log.Warn("non-HTTP traffic on the HTTP proxy listener", "client", conn.RemoteAddr().String())
		splice.Reset(conn)
	default:
		p.tcp.serveTCP(dconn, target{service: service, authority: service})
	}
}

// httpFront serves the HTTP/1.1 and h2c connections that detection found
// on one listener with the listener's HTTP path (chain.go).
type httpFront struct {
	p       *Proxy
	h1      *http.Server
	h1conns *httpx.ConnListener
	lean    *h1server.Server // HTTP/1.1 first; h1 (behind the inspector) takes what it declines
	h2      *http2.Server
	h1done  chan struct{}
	handler http.Handler
	// h2handler is handler with its goroutine's stack grown up front
	// (preGrown): x/net's server runs every stream on a new goroutine.
	h2handler http.Handler
}

func (p *Proxy) newHTTPFront(service string) *httpFront {
	f := &httpFront{p: p, h1conns: httpx.NewConnListener(), h1done: make(chan struct{}), handler: p.httpPath(service)}
	f.h2handler = preGrown(f.handler)
	f.h1 = &http.Server{
		Handler: f.handler,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return withConnTarget(httpx.ConnContext(ctx, c), c)
		},
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          nil,
	}
	f.lean = h1server.New(h1server.Config{
		Handler: f.handler,
		// The fallback path as before: net/http behind the framing
		// inspector, from the head the lean server declined.
		Fallback:          func(c net.Conn) { f.h1conns.Push(httpx.InspectConn(c)) },
		ConnContext:       withConnTarget,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		Log:               p.log,
	})
	f.h2 = &http2.Server{
		IdleTimeout:          p.cfg.IdleTimeout,
		MaxReadFrameSize:     1 << 20,
		MaxConcurrentStreams: 1000,
		// Request bodies the far side is not reading yet: at most
		// appUploadWindow per stream and appUploadConnWindow per client
		// connection are buffered here. The connection window is a
		// multiple of the stream window, so a few stalled uploads do
		// not stop the client's other streams (x/net's default is 1 MiB
		// for both: one stalled upload stopped them all).
		MaxUploadBufferPerStream:     appUploadWindow,
		MaxUploadBufferPerConnection: appUploadConnWindow,
		// x/net/http2 bounds header lists by the base server's
		// MaxHeaderBytes.
	}
	// Registers the h2 server with the h1 server's Shutdown, so a drain
	// sends GOAWAY on HTTP/2 connections too.
	if err := http2.ConfigureServer(f.h1, f.h2); err != nil {
		p.log.Error("configuring HTTP/2", "error", err)
	}
	return f
}

// start runs the HTTP/1 server over the connections serve pushes.
func (f *httpFront) start() {
	go func() {
		defer close(f.h1done)
		f.h1.Serve(f.h1conns)
	}()
}

// Request-body windows of the app-facing HTTP/2 server.
const (
	appUploadWindow     = 256 << 10
	appUploadConnWindow = 16 * appUploadWindow
)

// appSendBuffer caps the kernel send buffer of app connections served
// over HTTP. Linux grows a socket's send buffer up to
// net.ipv4.tcp_wmem[2] (4 MiB by default) even towards a client that
// never reads, so each such client would make the kernel hold megabytes
// for us, and make the mesh carry them before back-pressure reaches the
// peer. The app is local: a small buffer still covers the path's
// bandwidth-delay product many times over.
const appSendBuffer = 256 << 10

// capSendBuffer sets the send buffer of the socket under c's wrappers.
func capSendBuffer(c net.Conn, n int) {
	for {
		switch v := c.(type) {
		case interface{ SetWriteBuffer(int) error }:
			v.SetWriteBuffer(n)
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}

// serve takes over a detected connection. The HTTP/2 server serves it on
// this goroutine; the HTTP/1 server on its own, from the push. Either way
// the connection stays tracked until the server closes it.
func (f *httpFront) serve(conn net.Conn, proto detect.Protocol) {
	capSendBuffer(conn, appSendBuffer)
	switch proto {
	case detect.HTTP2:
		// x/net's server stops a flood of resets only when handlers
		// pile up; the guard closes connections that reset streams (or
		// make the server reset them) at an abusive rate, and lets
		// handlers see a reset that arrived with their request.
		g := h2guard.Wrap(conn, h2guard.Limit{}, func() {
			f.p.cfg.Metrics.LoadShed(telemetry.Outbound, "h2_reset_flood")
			f.p.log.Debug("closing HTTP/2 connection: stream resets at an abusive rate", "remote", conn.RemoteAddr().String())
		})
		ctx := withConnTarget(context.Background(), conn)
		f.h2.ServeConn(g, &http2.ServeConnOpts{Context: h2guard.NewContext(ctx, g), Handler: f.h2handler, BaseConfig: f.h1})
	default:
		f.lean.ServeConn(conn)
	}
}

// shutdown drains both HTTP/1 servers (and, through h1, HTTP/2).
func (f *httpFront) shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); f.lean.Shutdown(ctx) }()
	f.h1.Shutdown(ctx)
	<-done
}

func (f *httpFront) close() {
	f.h1.Close()
	<-f.h1done
}

// preGrown runs h after growing the goroutine's stack to what the HTTP
// path needs, in one step while the stack is still shallow. x/net's
// HTTP/2 server starts a goroutine per stream with a small stack (2-4
// KiB); the outbound path (its layers, the balancer, quic-go's HTTP/3
// client) needs more than 8 KiB (with 8 KiB up front it still grew), so
// the stack grew once or twice per request deep in the path, where
// runtime.copystack has ~20 frames to copy and adjust: 6-9 % of the
// client sidecar's CPU per gRPC call (docs/benchmarks.md, "Client
// sidecar, gRPC unary"). Grown here it copies the few frames above this
// one. The goroutines end with the stack they had grown to before.
func preGrown(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack()
		h.ServeHTTP(w, r)
	})
}

// h2StackPad is the frame growStack uses: with the frames above it and
// the runtime's stack guard, the stack becomes 16 KiB.
const h2StackPad = 12 << 10

// growStack has a frame of h2StackPad bytes, which makes the runtime
// grow the stack (if it is smaller) to hold it on entry. The pad is
// declared in a branch never taken (growStackTouch is never set), so the
// frame keeps its size but is not zeroed (12 KiB of zeroing was ~1 % of
// the client sidecar's CPU per gRPC call).
//
//go:noinline
func growStack() {
	if growStackTouch {
		var pad [h2StackPad]byte
		touch(pad[:])
	}
}

var growStackTouch bool

//go:noinline
func touch([]byte) {}
