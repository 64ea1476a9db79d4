package outbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// tunnel is an open tunnel stream, the connection that carries it and
// the balancer pick it counts on until done is called.
type tunnel struct {
	pc   PeerConn
	str  TunnelStream
	pick *pick
}

// done ends the tunnel's count on its endpoint.
func (t tunnel) done() { t.pick.done() }

// openError is a failure to open a tunnel stream on peer, the connection
// the last attempt used.
type openError struct {
	peer PeerConn
	err  error
}

func (e *openError) Error() string { return e.err.Error() }
func (e *openError) Unwrap() error { return e.err }

// tunnelOpener opens tunnel streams to a target at an endpoint of a
// service, within its connect timeout. If the pooled connection turned
// out dead (meshcode.ErrNotProcessed: the stream could not be opened, or
// the peer lost its state, e.g. a QUIC stateless reset), nothing was
// sent, so it redials once and opens the stream on the fresh connection.
// The balancer learns each attempt's setup latency (pick to open stream),
// never the tunnel's lifetime; an open tunnel counts as outstanding work
// on its endpoint until its done.
type tunnelOpener struct {
	connector *connector
	timeout   time.Duration
	log       *slog.Logger
}

// open returns the open tunnel, or a *connectError or an *openError.
func (o tunnelOpener) open(ctx context.Context, t target) (tunnel, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	pc, pk, err := o.connector.connect(ctx, t.service, nil)
	if err != nil {
		return tunnel{}, err
	}
	for attempt := 0; ; attempt++ {
		str, err := pc.OpenTunnel(ctx, t.authority)
		if err == nil {
			pk.observe(false)
			return tunnel{pc, str, pk}, nil
		}
		pk.report(true)
		pc.Forget()
		if attempt > 0 || !errors.Is(err, meshcode.ErrNotProcessed) || ctx.Err() != nil {
			return tunnel{}, &openError{pc, err}
		}
		o.log.Debug("retrying tunnel open on a fresh connection", "service", t.service, "peer", pc.Addr(), "error", err)
		next, nextPick, cerr := o.connector.connect(ctx, t.service, nil)
		if cerr != nil {
			return tunnel{}, &openError{pc, fmt.Errorf("%w (redialling: %w)", err, cerr.(*connectError).err)}
		}
		pc, pk = next, nextPick
	}
}

// splicer runs an open tunnel to completion with its bookkeeping: the
// peer connection's stream count and the TCP metrics, labelled by label.
type splicer struct {
	metrics *telemetry.Metrics
	log     *slog.Logger
}

func (s splicer) run(conn net.Conn, tn tunnel, label string) {
	end := tn.pc.Begin()
	closed := s.metrics.TCPOpen(telemetry.Outbound, tn.pc.Peer().String(), label)
	res := splice.Run(conn, tn.str)
	end()
	closed(res.Sent, res.Received, splice.ErrClass(res.Err))
	s.log.Debug("tcp tunnel closed", "service", label, "peer", tn.pc.Addr(), "sent", res.Sent, "received", res.Received, "error", res.Err)
}

// tcpHandler carries one opaque app connection.
type tcpHandler interface {
	serveTCP(conn net.Conn, t target)
}

// tcpForward tunnels an app connection to its target and splices it.
// Errors reset the app's connection: a client is never left hanging on a
// connection that will not carry data.
type tcpForward struct {
	opener   tunnelOpener
	splicer  splicer
	failures failureLog
}

func (f tcpForward) serveTCP(conn net.Conn, t target) {
	tn, err := f.opener.open(context.Background(), t)
	if err != nil {
		var oe *openError
		var ce *connectError
		switch {
		case errors.As(err, &oe):
			f.failures.failed("opening tunnel failed", t.service, oe.err, "peer", oe.peer.Addr())
		case errors.As(err, &ce):
			f.failures.failed("tcp forward failed", t.service, ce.err, "client", conn.RemoteAddr().String())
		}
		splice.Reset(conn)
		return
	}
	defer tn.done()
	f.splicer.run(conn, tn, t.service)
}

// httpTunnel carries a CONNECT or an HTTP/1.1 upgrade as an opaque
// stream: it opens the tunnel, takes over the app's connection, lets
// opening write the first bytes, forwards anything the client already
// sent, and splices the rest.
type httpTunnel struct {
	opener  tunnelOpener
	splicer splicer
	bound   string
	who     string
	opening func(conn net.Conn, r *http.Request, str io.Writer) error
}

// answerConnect is the opening of a CONNECT tunnel: the app hears that
// the tunnel is up.
func answerConnect(conn net.Conn, _ *http.Request, _ io.Writer) error {
	_, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
	return err
}

// replayUpgrade is the opening of an upgrade tunnel: the request itself
// goes to the far app, which answers 101 or not.
func replayUpgrade(_ net.Conn, r *http.Request, str io.Writer) error {
	out := r.Clone(r.Context())
	httpx.StripMeshHeaders(out.Header)
	httpx.KeepUserAgentAbsent(out.Header)
	out.RequestURI = ""
	return out.Write(str)
}

func (h httpTunnel) serve(w http.ResponseWriter, r *http.Request, t target) {
	tn, err := h.opener.open(r.Context(), t)
	if err != nil {
		var ce *connectError
		if errors.As(err, &ce) {
			bridge.WriteError(w, r, ce.kind, h.who, unknownServiceHint(h.bound, ce.err))
		} else {
			bridge.WriteError(w, r, bridge.BadGateway, h.who, err.Error())
		}
		return
	}
	defer tn.done()
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		tn.str.Reset(meshcode.Reset)
		bridge.WriteError(w, r, bridge.BadGateway, h.who, "cannot take over the connection: "+err.Error())
		return
	}
	conn.SetDeadline(time.Time{})
	if err := h.opening(conn, r, tn.str); err != nil {
		tn.str.Reset(meshcode.Reset)
		conn.Close()
		return
	}
	if err := forwardBuffered(bw, tn.str); err != nil {
		tn.str.Reset(meshcode.Reset)
		splice.Reset(conn)
		return
	}
	// Labelled by the tunnel target ("echo:80" for CONNECT echo:80), as
	// the inbound sidecar labels the same tunnel.
	h.splicer.run(conn, tn, t.authority)
}

// forwardBuffered sends what the HTTP server read past the request.
func forwardBuffered(bw *bufio.ReadWriter, str io.Writer) error {
	n := bw.Reader.Buffered()
	if n == 0 {
		return nil
	}
	buffered, _ := bw.Reader.Peek(n)
	_, err := str.Write(buffered)
	return err
}
