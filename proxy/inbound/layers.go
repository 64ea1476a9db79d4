package inbound

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// The inbound side serves a peer's HTTP request through a short chain of
// layers, each with one job; newHTTPChain sets their order:
//
//	identify → shed → measure → mapErrors → routeHTTP → authorize → switchProtocols → forward
//
// A layer either answers (a Result, or a failure for mapErrors to
// write) or passes the call to the next one. Tunnels have their own,
// shorter chain (tunnel.go: newTunnelChain).

// httpCall is one HTTP request from a peer as the layers see it; each
// layer fills in what it learns.
type httpCall struct {
	w http.ResponseWriter
	r *http.Request
	// peer is the identity the peer proved to the transport; tun is the
	// tunnel the request was parsed from, nil for a request the peer's
	// connection carried as HTTP. peerName is peer as text, made once
	// per connection or tunnel ("" until then: see peerText).
	peer     identity.ID
	peerName string
	tun      *streamConn
	// plain: the request came from a plain HTTP/3 client, not a sidecar,
	// so nothing in its header is what a sidecar asserts (identify).
	plain bool

	target    string // the routing key (identify)
	origProto string // what the far app spoke: "h1", "h2", or "" if unknown (identify)
	// destPort is the port the far app dialled on the transparent path,
	// 0 if none; badDestPort a field that was not a port (identify).
	destPort    uint16
	badDestPort bool
	route       route // (routeHTTP)
	// metrics and start are where and since when the call is measured,
	// recorded whether its response has been (measure, recordResponse).
	// Fields rather than a closure: one allocation fewer per request.
	metrics  *telemetry.Metrics
	start    time.Time
	recorded bool
}

// peerText is the peer's identity as text.
func (c *httpCall) peerText() string {
	if c.peerName == "" && !c.peer.IsZero() {
		c.peerName = c.peer.String()
	}
	return c.peerName
}

// recordResponse records the response in the golden metrics, once: at
// once when the connection changes hands (switchProtocols; the call then
// lasts the whole session), else when the chain returns (measure).
func (c *httpCall) recordResponse(res bridge.Result) {
	if c.metrics == nil || c.recorded {
		return
	}
	c.recorded = true
	c.metrics.ResponseDone(telemetry.Inbound, c.peerText(), c.target, bridge.Proto(c.r), res.Status, res.GRPCStatus, bridge.Class(res), time.Since(c.start))
}

// httpLayer is one layer of the chain.
type httpLayer interface {
	serveHTTP(c *httpCall) (bridge.Result, error)
}

// httpFailure is a request the inbound side answers itself: the kind
// decides the status (bridge.WriteError), reason is told to the caller.
type httpFailure struct {
	kind   bridge.ErrorKind
	reason string
}

func (f *httpFailure) Error() string { return f.reason }

func fail(kind bridge.ErrorKind, format string, args ...any) *httpFailure {
	return &httpFailure{kind: kind, reason: fmt.Sprintf(format, args...)}
}

// newHTTPChain builds the HTTP layers in their order. shed sits outside
// measure: a request shed is counted as shed, not as a request.
// authorize sits between routeHTTP and switchProtocols: it needs the
// route, and a denied request must reach no app; it sits inside measure,
// so a 403 is counted as a response like any other.
func newHTTPChain(cfg Config, routes routeTable, ports destPorts, pol *policy, inflight *atomic.Int64) httpLayer {
	who := "inbound " + cfg.Name
	var h httpLayer = forward{up: cfg.Upstream, log: cfg.Logger}
	h = switchProtocols{next: h, up: cfg.Upstream, connectTimeout: cfg.ConnectTimeout, metrics: cfg.Metrics, log: cfg.Logger}
	h = authorize{next: h, policy: pol}
	h = routeHTTP{next: h, routes: routes, ports: ports, metrics: cfg.Metrics}
	h = mapErrors{next: h, who: who}
	h = measure{next: h, metrics: cfg.Metrics}
	h = shed{next: h, max: cfg.MaxInFlight, inflight: inflight, metrics: cfg.Metrics, who: who}
	return identify{next: h}
}

// identify establishes what the request is for and strips whatever the
// peer sent in the mesh's header namespace: only what this sidecar
// verified itself (the peer's identity, added by forward) reaches the
// app.
type identify struct{ next httpLayer }

func (l identify) serveHTTP(c *httpCall) (bridge.Result, error) {
	if c.tun != nil {
		// Parsed from a tunnel's bytes: every header is the far app's
		// own, so the route is the tunnel's and the protocol the one the
		// bytes spoke.
		c.target, c.origProto, c.destPort = c.tun.info.target, "h1", c.tun.info.destPort
		if c.r.ProtoMajor == 2 {
			c.origProto = "h2"
		}
	} else if c.plain {
		// A plain HTTP/3 client names its service by :authority, as any
		// HTTP client does; the mesh headers it may have sent (the
		// service, the far app's protocol, a destination port) are what
		// a sidecar asserts, so they are ignored, then stripped below.
		c.target = c.r.Host
	} else {
		c.target = c.r.Header.Get(httpx.HeaderService)
		c.origProto = c.r.Header.Get(httpx.HeaderOrigProto)
		c.destPort, c.badDestPort = parseDestPort(c.r.Header.Get(httpx.HeaderDestPort))
		if c.target == "" {
			c.target = c.r.Host
		}
	}
	httpx.StripMeshHeaders(c.r.Header)
	return l.next.serveHTTP(c)
}

// shed drops work not worth doing: a request its peer reset before we
// started (HTTP/2 Rapid Reset through a tunnel), and requests beyond
// max in flight (503).
type shed struct {
	next     httpLayer
	max      int // <= 0: no limit
	inflight *atomic.Int64
	metrics  *telemetry.Metrics
	who      string
}

func (l shed) serveHTTP(c *httpCall) (bridge.Result, error) {
	if h2guard.StreamReset(c.r.Context()) {
		return bridge.Result{}, nil
	}
	n := l.inflight.Add(1)
	defer l.inflight.Add(-1)
	if l.max > 0 && n > int64(l.max) {
		l.metrics.LoadShed(telemetry.Inbound, "max_in_flight")
		return writeFailure(c, l.who, fail(bridge.Unavailable, "overloaded: more than %d requests in flight", l.max)), nil
	}
	return l.next.serveHTTP(c)
}

// measure records the request and its response in the golden metrics.
type measure struct {
	next    httpLayer
	metrics *telemetry.Metrics
}

func (l measure) serveHTTP(c *httpCall) (bridge.Result, error) {
	c.metrics, c.start = l.metrics, time.Now()
	l.metrics.RequestStarted(telemetry.Inbound, c.target)
	res, err := l.next.serveHTTP(c)
	c.recordResponse(res)
	return res, err
}

// mapErrors answers a failure of the layers below it: a status (or a gRPC
// status) by kind, and the reason in Quicmesh-Proxy-Error.
type mapErrors struct {
	next httpLayer
	who  string
}

func (l mapErrors) serveHTTP(c *httpCall) (bridge.Result, error) {
	res, err := l.next.serveHTTP(c)
	if f, ok := err.(*httpFailure); ok {
		return writeFailure(c, l.who, f), nil
	}
	return res, err
}

func writeFailure(c *httpCall, who string, f *httpFailure) bridge.Result {
	return bridge.WriteError(c.w, c.r, f.kind, who, f.reason)
}

// routeHTTP finds the app that serves the request's target.
type routeHTTP struct {
	next    httpLayer
	routes  routeTable
	ports   destPorts
	metrics *telemetry.Metrics
}

func (l routeHTTP) serveHTTP(c *httpCall) (bridge.Result, error) {
	if c.badDestPort {
		return bridge.Result{}, fail(bridge.BadGateway, "invalid %s", httpx.HeaderDestPort)
	}
	if c.destPort != 0 {
		rt, ok := l.ports.route(c.destPort, l.routes.nameOf(c.target))
		if !ok {
			l.metrics.InboundConn(telemetry.SourceMesh, telemetry.ResultRefused)
			return bridge.Result{}, fail(bridge.Unavailable, "port %d is not a port of this endpoint", c.destPort)
		}
		l.metrics.InboundConn(telemetry.SourceMesh, telemetry.ResultDelivered)
		c.route = rt
		return l.next.serveHTTP(c)
	}
	rt, ok := l.routes.lookup(c.target)
	if !ok {
		return bridge.Result{}, fail(bridge.Unavailable, "no local app serves %q", c.target)
	}
	if rt.proto == ProtoTCP {
		return bridge.Result{}, fail(bridge.BadGateway, "route for %q does not accept HTTP", c.target)
	}
	c.route = rt
	return l.next.serveHTTP(c)
}

// forward sends the request to its app, with the peer's verified
// identity, and relays the response.
type forward struct {
	up  Upstream
	log *slog.Logger
}

func (l forward) serveHTTP(c *httpCall) (bridge.Result, error) {
	r, addr := c.r, c.route.addr
	h2c := c.route.proto == ProtoH2C || (c.route.proto == ProtoAuto && (c.origProto == "h2" || bridge.IsGRPC(r)))
	ctx := r.Context()
	if d, ok := bridge.GRPCTimeout(r); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out := prepareForApp(ctx, r, addr)
	if !c.peer.IsZero() {
		out.Header[httpx.HeaderPeerIdentity] = []string{c.peerText()}
	}
	rt := roundTripper(func(req *http.Request) (*http.Response, error) { return l.up.RoundTrip(req, h2c) })
	res, err := bridge.Forward(c.w, out, rt, bridge.Options{StripResponseMesh: true})
	if err != nil {
		kind := bridge.Classify(err)
		if bridge.DeadlinePassed(ctx) {
			kind = bridge.Timeout
		}
		l.log.Warn("forwarding to app failed", "target", c.target, "app", addr, "error", err)
		return res, &httpFailure{kind: kind, reason: "app " + addr + ": " + err.Error()}
	}
	return res, nil
}

// prepareForApp is the request to the app made from r as
// bridge.PrepareOutgoing makes it, without its copy of the header: the
// peer's request ends here and nothing reads its header after this layer
// but what its failure response needs (the Content-Type), which cleaning
// leaves alone, so the fields are cleaned in place and shared. A request
// whose body brings trailers takes bridge.PrepareOutgoing.
func prepareForApp(ctx context.Context, r *http.Request, addr string) *http.Request {
	out, ok := httpx.NextHop(ctx, r, "http", addr)
	if !ok {
		return bridge.PrepareOutgoing(ctx, r, "http", addr)
	}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	httpx.RemoveHopByHop(r.Header)
	httpx.StripMeshHeaders(r.Header)
	httpx.KeepUserAgentAbsent(r.Header)
	r.Header.Del("Expect")
	return out
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
