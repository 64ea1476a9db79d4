package inbound

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// switchProtocols is the layer for a request that asks to leave HTTP:
// an Upgrade (WebSocket) or a CONNECT. Other requests go to next.
type switchProtocols struct {
	next           httpLayer
	up             Upstream
	connectTimeout time.Duration
	metrics        *telemetry.Metrics
	log            *slog.Logger
}

// serveHTTP forwards a request that asks to leave HTTP to the app
// on a connection of its own, with the verified identity like any other
// request. If the app agrees (101 naming the protocol asked for, or 2xx to
// CONNECT), the tunnel and the app connection are spliced: the app itself
// chose to stop speaking HTTP. If it refuses, its answer is an ordinary
// response and the tunnel stays HTTP: whatever the client sends next is
// parsed, checked and forwarded as requests, never spliced raw.
//
// net/http/httputil.ReverseProxy handles upgrades too, but drops bytes the
// client sent right behind its request (they sit in the server's buffer,
// and it copies from the raw connection), has no CONNECT, and cannot carry
// a half-close to the app; so the exchange is done here with
// Request.Write, http.ReadResponse and splice.Run.
func (l switchProtocols) serveHTTP(c *httpCall) (bridge.Result, error) {
	w, r := c.w, c.r
	if r.Method != http.MethodConnect && httpx.UpgradeType(r.Header) == "" {
		return l.next.serveHTTP(c)
	}
	addr := c.route.addr
	if c.tun == nil || r.ProtoMajor != 1 {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: "switching protocols needs HTTP/1.1 carried by a tunnel"}
	}
	if c.route.proto == ProtoH2C {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: "the app speaks h2c only: it cannot switch an HTTP/1.1 connection"}
	}
	ctx, cancel := context.WithTimeout(r.Context(), l.connectTimeout)
	app, err := l.up.Dial(ctx, addr)
	cancel()
	if err != nil {
		l.log.Warn("connecting to app failed", "target", c.target, "app", addr, "error", err)
		return bridge.Result{}, &httpFailure{kind: bridge.Classify(err), reason: "app " + addr + ": " + err.Error()}
	}
	defer app.Close()
	// A client that goes away before the app answers ends the wait.
	stop := context.AfterFunc(r.Context(), func() { app.Close() })
	defer stop()

	out := bridge.PrepareOutgoing(r.Context(), r, "http", addr)
	if !c.peer.IsZero() {
		out.Header[httpx.HeaderPeerIdentity] = []string{c.peerText()}
	}
	upgrade := httpx.UpgradeType(r.Header)
	if r.Method != http.MethodConnect {
		// PrepareOutgoing dropped the hop-by-hop fields, these two
		// included; the app gets the handshake and nothing else the
		// client's Connection named.
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	if err := out.Write(app); err != nil {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: "app " + addr + ": sending request: " + err.Error()}
	}
	br := bufio.NewReader(app)
	resp, err := readFinalResponse(br, out)
	if err != nil {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: "app " + addr + ": reading response: " + err.Error()}
	}
	defer resp.Body.Close()

	accepted := resp.StatusCode == http.StatusSwitchingProtocols
	if r.Method == http.MethodConnect {
		accepted = resp.StatusCode/100 == 2
	} else if accepted && !strings.EqualFold(resp.Header.Get("Upgrade"), upgrade) {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: fmt.Sprintf("app switched to %q when %q was asked for", resp.Header.Get("Upgrade"), upgrade)}
	}
	if !accepted {
		h := w.Header()
		httpx.CopyHeader(h, resp.Header)
		httpx.RemoveHopByHop(h)
		httpx.StripMeshHeaders(h)
		w.WriteHeader(resp.StatusCode)
		if _, err := io.Copy(w, resp.Body); err != nil {
			panic(http.ErrAbortHandler) // a truncated answer must not look complete
		}
		return bridge.Result{Status: resp.StatusCode}, nil
	}

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return bridge.Result{}, &httpFailure{kind: bridge.BadGateway, reason: "cannot take over the connection: " + err.Error()}
	}
	defer conn.Close()
	stop()
	h := resp.Header.Clone()
	httpx.StripMeshHeaders(h)
	fmt.Fprintf(brw, "HTTP/1.1 %s\r\n", resp.Status)
	h.Write(brw)
	brw.WriteString("\r\n")
	if n := br.Buffered(); n > 0 { // the app's first bytes after its head
		b, _ := br.Peek(n)
		brw.Write(b)
	}
	if err := brw.Flush(); err != nil {
		return bridge.Result{Status: resp.StatusCode}, nil
	}
	if n := brw.Reader.Buffered(); n > 0 { // the client's, after its request
		b, _ := brw.Reader.Peek(n)
		if _, err := app.Write(b); err != nil {
			c.tun.abort(meshcode.Reset)
			return bridge.Result{Status: resp.StatusCode}, nil
		}
	}
	res := bridge.Result{Status: resp.StatusCode}
	c.recordResponse(res)
	// Below the framing inspector: what follows is not HTTP. Reading
	// through the detection replay keeps any byte it still holds.
	var src net.Conn = conn
	if u, ok := src.(interface{ NetConn() net.Conn }); ok {
		src = u.NetConn()
	}
	closed := l.metrics.TCPOpen(telemetry.Inbound, c.peerText(), c.target)
	sres := splice.Run(app, readThrough{r: src, Stream: c.tun.str})
	closed(sres.Received, sres.Sent, splice.ErrClass(sres.Err))
	return res, nil
}

// readFinalResponse reads the app's answer, skipping interim 1xx
// responses other than 101.
func readFinalResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols || resp.StatusCode >= 200 {
			return resp, nil
		}
		resp.Body.Close()
	}
}
