package transport

import (
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// ALPNH3 is standard HTTP/3's ALPN. A listener with Config.AcceptH3
// negotiates it besides ALPN, for plain HTTP/3 clients that present a mesh
// certificate (Caddy's or Envoy's HTTP/3 upstream, curl): the same mTLS
// handshake, trust bundles and Authorizer as a sidecar's connection, the
// same inbound HTTP chain (routing, authorization policy, the verified
// identity to the app), but no tunnels, and no header of theirs taken for
// one a sidecar asserts (docs/design.md, "Standard HTTP/3 at the edge").
const ALPNH3 = http3.NextProtoH3

// listenProtos are the ALPN protocols a listener offers, the mesh's first:
// the server's order decides when a client offers both (crypto/tls picks
// the first of the server's that the client lists), so a sidecar that
// also lists "h3" still gets the mesh protocol.
func listenProtos(acceptH3 bool) []string {
	if acceptH3 {
		return []string{ALPN, ALPNH3}
	}
	return []string{ALPN}
}

// isPlainHTTP3 tells a plain HTTP/3 client's connection from a sidecar's.
func isPlainHTTP3(conn *quic.Conn) bool {
	return conn.ConnectionState().TLS.NegotiatedProtocol == ALPNH3
}

// PlainHTTP3 reports whether the peer is a plain HTTP/3 client (ALPN "h3")
// rather than a sidecar: every stream it opens is an HTTP/3 request, and
// the inbound side routes it by its :authority alone.
func (c *ServerConn) PlainHTTP3() bool { return c.plain }
