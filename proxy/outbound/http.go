package outbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// httpFront serves the HTTP/1.1 and h2c connections that detection found
// on one listener. service is the bound service, or "" on the HTTP proxy
// listener where each request names its service by authority.
type httpFront struct {
	p       *Proxy
	service string
	h1      *http.Server
	h1conns *httpx.ConnListener
	h2      *http2.Server
	h1done  chan struct{}
	handler http.Handler
}

func (p *Proxy) newHTTPFront(service string) *httpFront {
	f := &httpFront{p: p, service: service, h1conns: httpx.NewConnListener(), h1done: make(chan struct{})}
	// Guard refuses malformed and smuggling-prone requests before the
	// handler sees them; on HTTP/1 it needs the raw-byte inspector that
	// serve wraps around each connection.
	f.handler = httpx.Guard(f)
	f.h1 = &http.Server{
		Handler:           f.handler,
		ConnContext:       httpx.ConnContext,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          nil,
	}
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
	go func() {
		defer close(f.h1done)
		f.h1.Serve(f.h1conns)
	}()
	return f
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

// serve takes over a detected connection.
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
		f.h2.ServeConn(g, &http2.ServeConnOpts{Context: h2guard.NewContext(context.Background(), g), Handler: f.handler, BaseConfig: f.h1})
	default:
		f.h1conns.Push(httpx.InspectConn(conn))
	}
}

func (f *httpFront) close() {
	f.h1.Close()
	<-f.h1done
}

// ServeHTTP is the outbound request path: route, forward over HTTP/3,
// map failures to statuses. httpx.Guard has validated the request.
func (f *httpFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := f.p
	if h2guard.StreamReset(r.Context()) {
		// The client reset the stream before we started (Rapid Reset):
		// no work upstream for a stream no one will read.
		return
	}
	if n := p.inflight.Add(1); p.cfg.MaxInFlight > 0 && n > int64(p.cfg.MaxInFlight) {
		p.inflight.Add(-1)
		p.cfg.Metrics.LoadShed(telemetry.Outbound, "max_in_flight")
		bridge.WriteError(w, r, bridge.Unavailable, p.who(), fmt.Sprintf("overloaded: more than %d requests in flight", p.cfg.MaxInFlight))
		return
	}
	defer p.inflight.Add(-1)

	service, authority, err := f.route(r)
	if err != nil {
		httpx.WriteValidationError(w, err)
		return
	}
	if r.Method == http.MethodConnect {
		f.connect(w, r, service, authority)
		return
	}
	if isUpgrade(r) {
		f.upgrade(w, r, service)
		return
	}

	start := time.Now()
	m := p.cfg.Metrics
	m.RequestStarted(telemetry.Outbound, service)
	var res bridge.Result
	peer := ""
	defer func() {
		m.ResponseDone(telemetry.Outbound, peer, service, bridge.Proto(r), res.Status, res.GRPCStatus, bridge.Class(res), time.Since(start))
	}()

	ctx := r.Context()
	if d, ok := bridge.GRPCTimeout(r); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	// A request without a body that the peer did not process (it was
	// draining or closing, or the pooled connection turned out dead, e.g.
	// a stateless reset after the peer restarted) is retried once, on a
	// fresh connection or another endpoint.
	for attempt := 0; ; attempt++ {
		connectCtx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		pc, done, err := p.Connect(connectCtx, service)
		kind := connectErrorKind(connectCtx, err)
		cancel()
		if err != nil {
			p.logFailure("http route failed", service, err)
			res = bridge.WriteError(w, r, kind, p.who(), f.reason(err))
			return
		}
		if r.Context().Err() != nil {
			// The client reset the stream or went away while we
			// connected: start nothing upstream.
			done(true)
			res = bridge.WriteError(w, r, bridge.BadGateway, p.who(), "the client cancelled the request before it was forwarded")
			return
		}
		peer = pc.Peer().String()
		end := pc.Begin()
		out := bridge.PrepareOutgoing(ctx, r, "https", authority)
		out.Header.Set(bridge.HeaderService, service)
		out.Header.Set(bridge.HeaderOrigProto, origProto(r))
		res, err = bridge.Forward(w, out, pc, bridge.Options{})
		end()
		done(err == nil && res.Status < 500)
		if err == nil {
			return
		}
		if !pc.Alive() || errors.Is(err, meshcode.ErrConnDead) {
			// A broken connection, not a per-request failure: redial next time.
			pc.Forget()
		}
		if attempt == 0 && bodyless(r) && errors.Is(err, meshcode.ErrNotProcessed) && ctx.Err() == nil {
			p.log.Debug("retrying request the peer did not process (closing, or a dead connection)", "service", service, "peer", pc.Addr(), "error", err)
			continue
		}
		kind = bridge.Classify(err)
		if bridge.DeadlinePassed(ctx) {
			kind = bridge.Timeout
		}
		p.logFailure("http forward failed", service, err, "peer", pc.Addr())
		res = bridge.WriteError(w, r, kind, p.who(), "forwarding to "+pc.Peer().String()+": "+err.Error())
		return
	}
}

// bodyless reports whether r has no body, so it can be sent again.
func bodyless(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0 && r.ProtoMajor == 1)
}

// connectErrorKind maps a failure to reach a service: 503 when there is
// nothing to reach (unknown service, no endpoints), 504 when our own time
// ran out, 502 when endpoints exist but none could be reached.
func connectErrorKind(ctx context.Context, err error) bridge.ErrorKind {
	switch {
	case err == nil:
		return bridge.BadGateway
	case errors.Is(err, discovery.ErrUnknownService), errors.Is(err, discovery.ErrNoEndpoints):
		return bridge.Unavailable
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return bridge.Timeout
	default:
		return bridge.BadGateway
	}
}

func origProto(r *http.Request) string {
	if r.ProtoMajor == 2 {
		return "h2"
	}
	return "h1"
}

// route finds the service and authority of a request. On a bound listener
// the service is fixed; on the HTTP proxy listener it comes from the
// absolute-form URI, the CONNECT target or the Host header.
func (f *httpFront) route(r *http.Request) (service, authority string, err error) {
	authority = r.Host
	if r.URL.IsAbs() && r.URL.Host != "" {
		authority = r.URL.Host
	}
	if f.service != "" {
		return f.service, authority, nil
	}
	if authority == "" {
		return "", "", httpx.BadRequest("no authority: cannot route the request")
	}
	host := authority
	if h, _, err := net.SplitHostPort(authority); err == nil {
		host = h
	}
	return host, authority, nil
}

func isUpgrade(r *http.Request) bool {
	return r.ProtoMajor == 1 && httpx.UpgradeType(r.Header) != ""
}

// connect serves an HTTP CONNECT by tunnelling the hijacked connection as
// an opaque stream to the target.
func (f *httpFront) connect(w http.ResponseWriter, r *http.Request, service, target string) {
	if r.ProtoMajor != 1 {
		bridge.WriteError(w, r, bridge.BadGateway, f.p.who(), "CONNECT over HTTP/2 is not supported; use HTTP/1.1")
		return
	}
	f.tunnel(w, r, service, target, func(conn net.Conn, bw *bufio.ReadWriter, str io.Writer) error {
		if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return err
		}
		return nil
	})
}

// upgrade carries an HTTP/1.1 Upgrade (WebSocket) as an opaque stream: the
// request itself is replayed to the far app, which answers 101 or not.
func (f *httpFront) upgrade(w http.ResponseWriter, r *http.Request, service string) {
	f.tunnel(w, r, service, service, func(conn net.Conn, bw *bufio.ReadWriter, str io.Writer) error {
		out := r.Clone(r.Context())
		httpx.StripMeshHeaders(out.Header)
		httpx.KeepUserAgentAbsent(out.Header)
		out.RequestURI = ""
		return out.Write(str)
	})
}

// tunnel hijacks the client connection, opens a tunnel stream, lets start
// write the opening bytes, forwards anything the client already sent, and
// splices the rest.
func (f *httpFront) tunnel(w http.ResponseWriter, r *http.Request, service, target string, start func(net.Conn, *bufio.ReadWriter, io.Writer) error) {
	p := f.p
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.ConnectTimeout)
	defer cancel()
	pc, done, err := p.Connect(ctx, service)
	if err != nil {
		bridge.WriteError(w, r, connectErrorKind(ctx, err), p.who(), f.reason(err))
		return
	}
	pc, done, str, err := p.openTunnel(ctx, service, target, pc, done)
	if err != nil {
		bridge.WriteError(w, r, bridge.BadGateway, p.who(), err.Error())
		return
	}
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		done(false)
		str.Reset(meshcode.Reset)
		bridge.WriteError(w, r, bridge.BadGateway, p.who(), "cannot take over the connection: "+err.Error())
		return
	}
	conn.SetDeadline(time.Time{})
	if err := start(conn, bw, str); err != nil {
		done(false)
		str.Reset(meshcode.Reset)
		conn.Close()
		return
	}
	if n := bw.Reader.Buffered(); n > 0 {
		buffered, _ := bw.Reader.Peek(n)
		if _, err := str.Write(buffered); err != nil {
			done(false)
			str.Reset(meshcode.Reset)
			splice.Reset(conn)
			return
		}
	}
	// Labelled by the tunnel target ("echo:80" for CONNECT echo:80), as
	// the inbound sidecar labels the same tunnel.
	p.splice(conn, str, pc, done, target)
}

// reason is the text of a proxy error for a request that found no
// endpoint. On the HTTP proxy listener the service name is the request's
// host, which an unknown service had better say.
func (f *httpFront) reason(err error) string {
	if f.service == "" && errors.Is(err, discovery.ErrUnknownService) {
		return err.Error() + " (the HTTP proxy takes the service name from the request's host)"
	}
	return err.Error()
}
