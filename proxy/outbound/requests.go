package outbound

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// stage is one layer of the request path after routing. It forwards the
// request (or passes it to the next stage) and says what happened: either
// a response was written (err nil), or nothing was and err says why.
type stage interface {
	serve(w http.ResponseWriter, r *http.Request, t target) outcome
}

type stageFunc func(w http.ResponseWriter, r *http.Request, t target) outcome

func (f stageFunc) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	return f(w, r, t)
}

// outcome is what a stage did with a request.
type outcome struct {
	// res is the response written to the app.
	res bridge.Result
	// peer is the connection the request went to, nil if none was
	// reached.
	peer PeerConn
	// err is why no response was written.
	err error
	// key is the balancer key of the endpoint the request went to, ""
	// if none was reached.
	key string
}

// measured records the golden metrics of every routed request.
type measured struct {
	metrics *telemetry.Metrics
	next    stage
}

func (m measured) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	start := time.Now()
	m.metrics.RequestStarted(telemetry.Outbound, t.service)
	o := m.next.serve(w, r, t)
	peer := ""
	if o.peer != nil {
		peer = o.peer.Peer().String()
	}
	m.metrics.ResponseDone(telemetry.Outbound, peer, t.service, bridge.Proto(r), o.res.Status, o.res.GRPCStatus, bridge.Class(o.res), time.Since(start))
	return o
}

// grpcDeadline bounds the rest of the path by the request's grpc-timeout.
type grpcDeadline struct{ next stage }

func (g grpcDeadline) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	if d, ok := bridge.GRPCTimeout(r); ok {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		r = r.WithContext(ctx)
	}
	return g.next.serve(w, r, t)
}

// Errors of the forwarding stages, which errorResponses maps to proxy
// error responses.
type (
	// forwardError is a request that reached peer and failed there or on
	// the way.
	forwardError struct {
		peer PeerConn
		err  error
	}
	// cancelledError is a request the app gave up on before it was sent.
	cancelledError struct{}
)

func (e *forwardError) Error() string {
	return "forwarding to " + e.peer.Peer().String() + ": " + e.err.Error()
}
func (e *forwardError) Unwrap() error { return e.err }
func (cancelledError) Error() string {
	return "the client cancelled the request before it was forwarded"
}

// errorResponses turns a failed request into the proxy error response the
// app gets, and a rate-limited log line.
type errorResponses struct {
	bound    string // the listener's service, "" on the HTTP proxy listener
	who      string
	failures failureLog
	next     stage
}

func (e errorResponses) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	o := e.next.serve(w, r, t)
	if o.err == nil {
		return o
	}
	kind, text := e.response(r.Context(), t.service, o.err)
	o.res, o.err = bridge.WriteError(w, r, kind, e.who, text), nil
	return o
}

// response is the kind and text of the error response for err, which it
// logs when it is worth a line.
func (e errorResponses) response(ctx context.Context, service string, err error) (bridge.ErrorKind, string) {
	var ce *connectError
	var fe *forwardError
	var pe *policyError
	switch {
	case errors.As(err, &pe):
		e.failures.failed("http request stopped by policy", service, pe)
		return pe.kind, pe.text
	case errors.As(err, &ce):
		e.failures.failed("http route failed", service, ce.err)
		return ce.kind, unknownServiceHint(e.bound, ce.err)
	case errors.As(err, &fe):
		kind := bridge.Classify(fe.err)
		if errors.Is(fe.err, meshcode.ErrConnDead) {
			// The peer stopped answering and the transport declared the
			// connection dead (its idle timeout is a timeout error):
			// that is an unreachable peer, not our time running out.
			kind = bridge.BadGateway
		}
		if bridge.DeadlinePassed(ctx) {
			kind = bridge.Timeout
		}
		e.failures.failed("http forward failed", service, fe.err, "peer", fe.peer.Addr())
		return kind, err.Error()
	case errors.Is(err, cancelledError{}):
		return bridge.BadGateway, err.Error()
	}
	e.failures.failed("http request failed", service, err)
	return bridge.BadGateway, err.Error()
}

// forwarder sends a request to an endpoint of its service: connect (with
// its own deadline), then one round trip on the shared connection. It
// reports the request's latency and outcome to the balancer, and forgets
// a connection the failure showed broken.
type forwarder struct {
	connector *connector
	timeout   time.Duration
}

func (f forwarder) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	ctx := r.Context()
	// Bounded by the connect timeout; its timer is made only if the
	// connection is not ready (lazyDeadline).
	connectCtx := withLazyTimeout(ctx, f.timeout)
	pc, pk, err := f.connector.connectTarget(connectCtx, t)
	connectCtx.release()
	if err != nil {
		return outcome{err: err}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// The client reset the stream or went away while we connected:
		// start nothing upstream.
		pk.report(false)
		return outcome{err: cancelledError{}}
	}
	end := pc.Begin()
	out := prepareOutgoing(ctx, r, t)
	res, err := bridge.Forward(w, out, pc, bridge.Options{})
	end()
	// A client that went away says nothing about the endpoint; our own
	// timeouts (a deadline, a cancellation with a timeout cause) do.
	clientGone := errors.Is(context.Cause(ctx), context.Canceled)
	pk.report(res.Status >= 500 || err != nil && !clientGone)
	if err == nil {
		return outcome{res: res, peer: pc, key: pk.ep.Key}
	}
	if !pc.Alive() || errors.Is(err, meshcode.ErrConnDead) {
		// A broken connection, not a per-request failure: redial next time.
		pc.Forget()
	}
	return outcome{peer: pc, key: pk.ep.Key, err: &forwardError{peer: pc, err: err}}
}

// prepareOutgoing is the request sent to the peer for r: what
// bridge.PrepareOutgoing makes of it, with the mesh fields. A request
// whose body brings trailers takes bridge.PrepareOutgoing itself (it
// copies them at the body's end); the others are made here without its
// copy of the header (Request.Clone): the fields are put in a new map
// under their lower-case names (httpx.OutgoingFields), which quic-go
// sends without lower-casing each, and the values are shared with r's,
// which nothing modifies (a retry prepares r again).
func prepareOutgoing(ctx context.Context, r *http.Request, t target) *http.Request {
	out, ok := httpx.NextHop(ctx, r, "https", t.authority)
	if !ok {
		out = bridge.PrepareOutgoing(ctx, r, "https", t.authority)
		setMeshHeaders(out.Header, r, t)
		return out
	}
	out.Header = make(http.Header, len(r.Header)+1)
	httpx.OutgoingFields(out.Header, r.Header)
	setMeshHeaders(out.Header, r, t)
	return out
}

// setMeshHeaders adds the fields the far sidecar routes by. Each costs
// QPACK work on both sides of every request (quic-go's encoder has no
// dynamic table, so a name and value not in the static table are
// Huffman-coded and decoded every time), so a field whose absence says
// the same is left out: Quicmesh-Orig-Proto is sent only for h2, as the
// inbound side treats a missing one like h1 (it switches to h2c only
// for "h2" or gRPC). The names are in lower case, as HTTP/3 sends them
// (httpx.WireService): quic-go would otherwise lower-case each, an
// allocation per field and request.
func setMeshHeaders(h http.Header, r *http.Request, t target) {
	h[httpx.WireService] = []string{t.service}
	if r.ProtoMajor == 2 {
		h[httpx.WireOrigProto] = []string{"h2"}
	}
	if t.port != 0 {
		h[httpx.WireDestPort] = []string{strconv.Itoa(int(t.port))}
	}
}
