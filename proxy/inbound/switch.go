package inbound

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// switchRequest is a request that asks to leave HTTP: an Upgrade
// (WebSocket) or a CONNECT.
type switchRequest struct {
	tun    *streamConn // nil for HTTP/3
	proto  string      // the route's app protocol
	addr   string      // the app
	target string
	peer   identity.ID
	// switched records the response in metrics when the connection
	// changes hands (the handler then runs for the whole session).
	switched func(bridge.Result)
}

// switchProtocols forwards a request that asks to leave HTTP to the app
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
func (a *appHTTP) switchProtocols(w http.ResponseWriter, r *http.Request, sr switchRequest) bridge.Result {
	if sr.tun == nil || r.ProtoMajor != 1 {
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), "switching protocols needs HTTP/1.1 carried by a tunnel")
	}
	if sr.proto == ProtoH2C {
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), "the app speaks h2c only: it cannot switch an HTTP/1.1 connection")
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.s.cfg.ConnectTimeout)
	app, err := a.s.cfg.Upstream.Dial(ctx, sr.addr)
	cancel()
	if err != nil {
		a.s.log.Warn("connecting to app failed", "target", sr.target, "app", sr.addr, "error", err)
		return bridge.WriteError(w, r, bridge.Classify(err), a.who(), "app "+sr.addr+": "+err.Error())
	}
	defer app.Close()
	// A client that goes away before the app answers ends the wait.
	stop := context.AfterFunc(r.Context(), func() { app.Close() })
	defer stop()

	out := bridge.PrepareOutgoing(r.Context(), r, "http", sr.addr)
	if !sr.peer.IsZero() {
		out.Header.Set(httpx.HeaderPeerIdentity, sr.peer.String())
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
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), "app "+sr.addr+": sending request: "+err.Error())
	}
	br := bufio.NewReader(app)
	resp, err := readFinalResponse(br, out)
	if err != nil {
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), "app "+sr.addr+": reading response: "+err.Error())
	}
	defer resp.Body.Close()

	accepted := resp.StatusCode == http.StatusSwitchingProtocols
	if r.Method == http.MethodConnect {
		accepted = resp.StatusCode/100 == 2
	} else if accepted && !strings.EqualFold(resp.Header.Get("Upgrade"), upgrade) {
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), fmt.Sprintf("app switched to %q when %q was asked for", resp.Header.Get("Upgrade"), upgrade))
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
		return bridge.Result{Status: resp.StatusCode}
	}

	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return bridge.WriteError(w, r, bridge.BadGateway, a.who(), "cannot take over the connection: "+err.Error())
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
		return bridge.Result{Status: resp.StatusCode}
	}
	if n := brw.Reader.Buffered(); n > 0 { // the client's, after its request
		b, _ := brw.Reader.Peek(n)
		if _, err := app.Write(b); err != nil {
			sr.tun.abort(meshcode.Reset)
			return bridge.Result{Status: resp.StatusCode}
		}
	}
	res := bridge.Result{Status: resp.StatusCode}
	sr.switched(res)
	// Below the framing inspector: what follows is not HTTP. Reading
	// through the detection replay keeps any byte it still holds.
	var src net.Conn = conn
	if u, ok := src.(interface{ NetConn() net.Conn }); ok {
		src = u.NetConn()
	}
	closed := a.s.cfg.Metrics.TCPOpen(telemetry.Inbound, sr.peer.String(), sr.target)
	sres := splice.Run(app, readThrough{r: src, Stream: sr.tun.str})
	closed(sres.Received, sres.Sent, splice.ErrClass(sres.Err))
	return res
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
