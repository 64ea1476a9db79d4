package inbound

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

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

// appHTTP forwards HTTP/3 requests from peer sidecars to the local app,
// keeping pooled connections to it: keep-alive for HTTP/1.1, multiplexed
// connections with bounded receive windows for h2c.
type appHTTP struct {
	s   *Server
	h1  *http.Transport
	h2c *h2cPool
	// h1RT and h2cRT are what requests are sent with: h1 and h2c, or
	// stand-ins in tests.
	h1RT, h2cRT http.RoundTripper
}

func newAppHTTP(s *Server) *appHTTP {
	dialer := &net.Dialer{Timeout: s.cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	streamWindow, streamsPerConn := s.cfg.AppStreamWindow, s.cfg.AppStreamsPerConn
	if streamWindow <= 0 {
		streamWindow = DefaultAppStreamWindow
	}
	if streamsPerConn <= 0 {
		streamsPerConn = DefaultAppStreamsPerConn
	}
	a := &appHTTP{
		s: s,
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
	a.h1RT, a.h2cRT = a.h1, a.h2c
	return a
}

func (a *appHTTP) close() {
	a.h1.CloseIdleConnections()
	a.h2c.close()
}

func (a *appHTTP) who() string { return "inbound " + a.s.cfg.Name }

func (a *appHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h2guard.StreamReset(r.Context()) {
		// HTTP/2 carried by a tunnel, reset by the peer before we
		// started: no work for the app (Rapid Reset from a peer).
		return
	}
	var target, origProto string
	tun := tunnelFrom(r.Context())
	if tun != nil {
		// Parsed from a tunnel's bytes: every header is the far app's
		// own, so the route is the tunnel's and the protocol the one the
		// bytes spoke.
		target, origProto = tun.info.target, "h1"
		if r.ProtoMajor == 2 {
			origProto = "h2"
		}
	} else {
		target = r.Header.Get(bridge.HeaderService)
		origProto = r.Header.Get(bridge.HeaderOrigProto)
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
	peerID, _ := PeerIDFrom(r.Context())
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
