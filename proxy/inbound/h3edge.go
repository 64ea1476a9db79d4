package inbound

// plainHTTP3 is what a PeerConn of a transport that accepts plain HTTP/3
// clients (ALPN "h3") besides sidecars also implements.
type plainHTTP3 interface {
	// PlainHTTP3 reports whether the peer is a plain HTTP/3 client: its
	// requests are routed by :authority, and every Quicmesh-* field it
	// sends is dropped, as from any peer.
	PlainHTTP3() bool
}

// isPlainHTTP3 tells a plain HTTP/3 client's connection from a sidecar's;
// a transport that has no such clients (TCP, a test's fake) has none.
func isPlainHTTP3(c PeerConn) bool {
	p, ok := c.(plainHTTP3)
	return ok && p.PlainHTTP3()
}
