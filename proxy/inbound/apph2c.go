package inbound

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/quicmesh/quicmesh/internal/h2client"
	"golang.org/x/net/http2"
)

// Defaults for the HTTP/2 connections from the inbound sidecar to its app.
const (
	// DefaultAppStreamWindow is the HTTP/2 receive window, and so the
	// most response data buffered, per request to an h2c app: the
	// protocol's own default window. x/net's and net/http's client
	// default (4 MiB per stream, 1 GiB per connection) let one client
	// that never reads make us buffer gigabytes.
	DefaultAppStreamWindow = 64 << 10
	// DefaultAppStreamsPerConn is how many requests share one connection
	// to an h2c app before another connection is opened.
	DefaultAppStreamsPerConn = 100
)

// h2cPool sends what h2client does not (h2client.fallbackReason) to h2c
// apps over connections it keeps itself, with at most maxStreams
// requests on each. Each connection's receive window is maxStreams × the
// stream window, so even when every one of its streams has stalled (a
// client that stopped reading), the streams hold only their own windows
// and never the connection's: a stalled stream stalls itself, not the
// requests that share its app connection. net/http's pool would put as
// many streams on a connection as the app allows (gRPC servers allow any
// number), so this pool takes http.ClientConns from the Transport and
// picks among them with h2client.Pool.
//
// The HTTP/2 behind the Transport is x/net/http2's
// (http2.ConfigureTransports), not net/http's bundled copy: the sidecar
// is built with the nethttpomithttp2 tag, which leaves the bundled copy
// out (docs/benchmarks.md, "The sidecar without net/http's bundled
// HTTP/2"). The settings still come from the Transport: HTTP2 for the
// windows and the ping, MaxResponseHeaderBytes for the header bound.
type h2cPool struct {
	*h2client.Pool[appConn]
}

func newH2CPool(dial func(ctx context.Context, network, addr string) (net.Conn, error), streamWindow, maxStreams int) *h2cPool {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols:              &protos,
		DialContext:            dial,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		IdleConnTimeout:        90 * time.Second,
		HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream:     streamWindow,
			MaxReceiveBufferPerConnection: streamWindow * maxStreams,
			SendPingTimeout:               30 * time.Second,
		},
	}
	if _, err := http2.ConfigureTransports(tr); err != nil {
		// Only if tr had HTTP/2 set up already, which it has not.
		panic("inbound: setting up x/net/http2 for the h2c fallback: " + err.Error())
	}
	return &h2cPool{h2client.NewPool(func(ctx context.Context, addr string) (appConn, error) {
		cc, err := tr.NewClientConn(ctx, "http", addr)
		return appConn{cc, maxStreams}, err
	})}
}

// RoundTrip sends req on a connection to req.URL.Host with a free slot,
// dialing one when every connection is full.
func (p *h2cPool) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		// The caller is gone already: do not start work at the app.
		return nil, err
	}
	cc, err := p.Reserve(ctx, req.URL.Host)
	if err != nil {
		return nil, err
	}
	return cc.RoundTrip(req)
}

// appConn is a connection of h2cPool.
type appConn struct {
	*http.ClientConn
	maxStreams int
}

func (c appConn) TryReserve(take bool) (ok, dead bool) {
	if c.Err() != nil {
		return false, true // closed by the app, by idleness or by an error
	}
	return take && c.InFlight() < c.maxStreams && c.Reserve() == nil, false
}
