package inbound

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
)

// App protocols a route can name with a scheme prefix on its address.
const (
	ProtoAuto = ""     // HTTP/1.1, or h2c when the caller spoke HTTP/2
	ProtoHTTP = "http" // HTTP/1.1 only
	ProtoH2C  = "h2c"  // HTTP/2 with prior knowledge
	ProtoTCP  = "tcp"  // opaque only: HTTP requests are refused
)

// ParseAppAddr splits a route value such as "h2c://127.0.0.1:7000" into
// protocol and address; a bare address means ProtoAuto.
func ParseAppAddr(v string) (proto, addr string, err error) {
	if scheme, rest, ok := strings.Cut(v, "://"); ok {
		switch scheme {
		case ProtoHTTP, ProtoH2C, ProtoTCP:
			proto, v = scheme, rest
		default:
			return "", "", fmt.Errorf("route %q: unknown app protocol %q (want http, h2c or tcp)", v, scheme)
		}
	}
	if _, _, err := net.SplitHostPort(v); err != nil {
		return "", "", fmt.Errorf("route %q: app address: %w", v, err)
	}
	return proto, v, nil
}

// Upstream is where the inbound side delivers a peer's traffic once
// Routes has resolved its target to an address: the apps on this host
// (LocalApps); for a gateway, another cluster's endpoints.
type Upstream interface {
	// Dial connects to addr for bytes that are not HTTP requests: a
	// tunnel, or the protocol an app switched to.
	Dial(ctx context.Context, addr string) (net.Conn, error)
	// RoundTrip sends req to req.URL.Host: over HTTP/2 with prior
	// knowledge if h2c, else over HTTP/1.1.
	RoundTrip(req *http.Request, h2c bool) (*http.Response, error)
	// Close drops idle connections; requests in flight fail. Server.Close
	// calls it.
	Close()
}

// LocalApps is the Upstream of a sidecar: the apps on this host, with
// pooled connections to them: keep-alive for HTTP/1.1, multiplexed
// connections with bounded receive windows for h2c.
type LocalApps struct {
	dial net.Dialer // tunnels and switched protocols
	h1   *http.Transport
	h2c  *h2cPool
}

// NewLocalApps returns the local apps' upstream. connectTimeout bounds
// connecting to an app; streamWindow and streamsPerConn size h2c
// connections (Config.AppStreamWindow, Config.AppStreamsPerConn; zero or
// less takes the defaults).
func NewLocalApps(connectTimeout time.Duration, streamWindow, streamsPerConn int) *LocalApps {
	dialer := &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}
	if streamWindow <= 0 {
		streamWindow = DefaultAppStreamWindow
	}
	if streamsPerConn <= 0 {
		streamsPerConn = DefaultAppStreamsPerConn
	}
	return &LocalApps{
		dial: net.Dialer{Timeout: connectTimeout},
		h1: &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			// Never HTTP/2 over this transport: h2c has its own.
			TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
			MaxResponseHeaderBytes: 64 << 10,
		},
		h2c: newH2CPool(dialer.DialContext, streamWindow, streamsPerConn),
	}
}

func (l *LocalApps) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return l.dial.DialContext(ctx, "tcp", addr)
}

func (l *LocalApps) RoundTrip(req *http.Request, h2c bool) (*http.Response, error) {
	if h2c {
		return l.h2c.RoundTrip(req)
	}
	return l.h1.RoundTrip(req)
}

func (l *LocalApps) Close() {
	l.h1.CloseIdleConnections()
	l.h2c.close()
}

// appHTTP forwards the HTTP requests of peer sidecars to the upstream.
type appHTTP struct {
	s *Server
	// h1RT and h2cRT are what requests are sent with: the upstream's, or
	// stand-ins in tests.
	h1RT, h2cRT http.RoundTripper
}

func newAppHTTP(s *Server) *appHTTP {
	up := s.cfg.Upstream
	return &appHTTP{
		s:     s,
		h1RT:  roundTripper(func(r *http.Request) (*http.Response, error) { return up.RoundTrip(r, false) }),
		h2cRT: roundTripper(func(r *http.Request) (*http.Response, error) { return up.RoundTrip(r, true) }),
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (a *appHTTP) close() { a.s.cfg.Upstream.Close() }

func (a *appHTTP) who() string { return "inbound " + a.s.cfg.Name }

// ServeHTTP serves a request parsed from the bytes of a tunnel.
func (a *appHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var peer identity.ID
	tun := tunnelFrom(r.Context())
	if tun != nil {
		peer = tun.info.peer
	}
	a.serve(w, r, peer, tun)
}

// serve forwards a request of the peer peerID: an HTTP request of its
// connection (tun nil), or one parsed from the bytes of tunnel tun.
func (a *appHTTP) serve(w http.ResponseWriter, r *http.Request, peerID identity.ID, tun *streamConn) {
	if h2guard.StreamReset(r.Context()) {
		// HTTP/2 carried by a tunnel, reset by the peer before we
		// started: no work for the app (Rapid Reset from a peer).
		return
	}
	var target, origProto string
	if tun != nil {
		// Parsed from a tunnel's bytes: every header is the far app's
		// own, so the route is the tunnel's and the protocol the one the
		// bytes spoke.
		target, origProto = tun.info.target, "h1"
		if r.ProtoMajor == 2 {
			origProto = "h2"
		}
	} else {
		target = r.Header.Get(httpx.HeaderService)
		origProto = r.Header.Get(httpx.HeaderOrigProto)
		if target == "" {
			target = r.Host
		}
	}
	// Whatever a peer sent in our namespace is dropped; only what we
	// verified ourselves is added below.
	httpx.StripMeshHeaders(r.Header)

	if n := a.s.inflight.Add(1); a.s.cfg.MaxInFlight > 0 && n > int64(a.s.cfg.MaxInFlight) {
		a.s.inflight.Add(-1)
		a.s.cfg.Metrics.LoadShed(telemetry.Inbound, "max_in_flight")
		bridge.WriteError(w, r, bridge.Unavailable, a.who(), fmt.Sprintf("overloaded: more than %d requests in flight", a.s.cfg.MaxInFlight))
		return
	}
	defer a.s.inflight.Add(-1)

	start := time.Now()
	m := a.s.cfg.Metrics
	m.RequestStarted(telemetry.Inbound, target)
	var res bridge.Result
	recorded := false
	record := func(res bridge.Result) {
		if !recorded {
			recorded = true
			m.ResponseDone(telemetry.Inbound, peerID.String(), target, bridge.Proto(r), res.Status, res.GRPCStatus, bridge.Class(res), time.Since(start))
		}
	}
	defer func() { record(res) }()
	value, ok := a.s.cfg.Routes.Lookup(target)
	if !ok {
		res = bridge.WriteError(w, r, bridge.Unavailable, a.who(), fmt.Sprintf("no local app serves %q", target))
		return
	}
	proto, addr, err := ParseAppAddr(value)
	if err != nil || proto == ProtoTCP {
		res = bridge.WriteError(w, r, bridge.BadGateway, a.who(), fmt.Sprintf("route for %q does not accept HTTP", target))
		return
	}
	if r.Method == http.MethodConnect || httpx.UpgradeType(r.Header) != "" {
		res = a.switchProtocols(w, r, switchRequest{tun: tun, proto: proto, addr: addr, target: target, peer: peerID, switched: record})
		return
	}
	rt := a.h1RT
	if proto == ProtoH2C || (proto == ProtoAuto && (origProto == "h2" || bridge.IsGRPC(r))) {
		rt = a.h2cRT
	}

	ctx := r.Context()
	if d, ok := bridge.GRPCTimeout(r); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	out := bridge.PrepareOutgoing(ctx, r, "http", addr)
	if !peerID.IsZero() {
		out.Header.Set(httpx.HeaderPeerIdentity, peerID.String())
	}
	res, err = bridge.Forward(w, out, rt, bridge.Options{StripResponseMesh: true})
	if err != nil {
		kind := bridge.Classify(err)
		if bridge.DeadlinePassed(ctx) {
			kind = bridge.Timeout
		}
		a.s.log.Warn("forwarding to app failed", "target", target, "app", addr, "error", err)
		res = bridge.WriteError(w, r, kind, a.who(), "app "+addr+": "+err.Error())
	}
}
