package inbound

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/h1client"
	"github.com/quicmesh/quicmesh/internal/h2client"
)

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
//
// HTTP/1.1 goes through h1client, which reads and writes on the
// request's own goroutine instead of net/http's two loops per
// connection (docs/benchmarks.md, "Lean app-side HTTP/1.1 client");
// what it does not do (see h1client.fallbackReason) goes to net/http's
// Transport, set up with the same limits. h2c goes through h2client,
// which writes a request's HEADERS on its own goroutine and hands the
// response over without net/http's per-request goroutine and channels
// (docs/benchmarks.md, "Lean app-side h2c client"); what it does not do
// (CONNECT, Upgrade, Expect: see h2client.fallbackReason) goes to
// h2cPool, net/http's HTTP/2 client with the same windows.
type LocalApps struct {
	dial    net.Dialer // tunnels and switched protocols
	h1      *h1client.Client
	h2c     *h2client.Client
	h2cPool *h2cPool // h2c's fallback
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
	std := &http.Transport{
		Proxy:               nil,
		DialContext:         dialer.DialContext,
		MaxIdleConns:        appMaxIdleConns,
		MaxIdleConnsPerHost: appMaxIdleConnsPerHost,
		IdleConnTimeout:     appIdleConnTimeout,
		DisableCompression:  true,
		// Never HTTP/2 over this transport: h2c has its own.
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxResponseHeaderBytes: appMaxResponseHeaderBytes,
	}
	pool := newH2CPool(dialer.DialContext, streamWindow, streamsPerConn)
	return &LocalApps{
		dial: net.Dialer{Timeout: connectTimeout},
		h1: h1client.New(h1client.Config{
			Dial:                   dialer.DialContext,
			MaxIdleConns:           appMaxIdleConns,
			MaxIdleConnsPerHost:    appMaxIdleConnsPerHost,
			IdleConnTimeout:        appIdleConnTimeout,
			MaxResponseHeaderBytes: appMaxResponseHeaderBytes,
			Fallback:               std,
		}),
		h2c: h2client.New(h2client.Config{
			Dial:                   dialer.DialContext,
			StreamWindow:           streamWindow,
			MaxStreams:             streamsPerConn,
			MaxResponseHeaderBytes: appMaxResponseHeaderBytes,
			IdleTimeout:            appIdleConnTimeout,
			Fallback:               pool,
		}),
		h2cPool: pool,
	}
}

// Limits of the HTTP/1.1 connections to the apps.
const (
	appMaxIdleConns           = 1024
	appMaxIdleConnsPerHost    = 256
	appIdleConnTimeout        = 90 * time.Second
	appMaxResponseHeaderBytes = 64 << 10
)

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
	l.h2c.Close()
	l.h2cPool.Close()
}

// chainHandler is the HTTP chain as the http.Handler of the servers
// that read HTTP from tunnels: the tunnel the request came from, and so
// the peer, travel in its context.
type chainHandler struct{ chain httpLayer }

func (h chainHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &httpCall{w: w, r: r}
	if c.tun = tunnelFrom(r.Context()); c.tun != nil {
		c.peer, c.peerName = c.tun.info.peer, c.tun.info.peerName
	}
	h.chain.serveHTTP(c)
}

// peerHTTP is the HTTP chain as the handler of one peer connection's
// HTTP requests: the peer's verified identity travels with each.
type peerHTTP struct {
	chain    httpLayer
	peer     identity.ID
	peerName string // peer.String(), made once per connection
	plain    bool   // a plain HTTP/3 client, not a sidecar (h3edge.go)
}

func (h peerHTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.chain.serveHTTP(&httpCall{w: w, r: r, peer: h.peer, peerName: h.peerName, plain: h.plain})
}
