// Package quicinitial reads the TLS server name (SNI) and ALPN protocols
// from a QUIC client's Initial packets, without taking part in the
// connection.
//
// It exists for the cluster gateway (issue 16, option (a)): the gateway
// must not terminate the mesh TLS, because the destination sidecar has to
// verify the calling workload's certificate itself — a gateway that held
// the session could impersonate the caller. So the gateway only routes.
// It reads the ClientHello from the client's first flight, picks the
// destination sidecar from the server name, and from then on relays that
// flow's UDP datagrams both ways unchanged; the caller's QUIC+TLS
// connection runs end to end with the destination.
//
// Reading the ClientHello is possible because QUIC Initial packets are
// protected with keys derived from the client's Destination Connection
// ID and a salt published per QUIC version (RFC 9001 section 5.2, RFC 9369
// section 3.3.1): their protection stops nothing but on-path tampering by
// parties that do not read the RFC, and anyone on the path can decrypt
// them. Nothing here is secret, and nothing read here is authenticated:
// an attacker can send an Initial naming any server. That is fine for
// routing — the destination's handshake authenticates both ends — but the
// gateway must not treat the server name as proof of anything, and must
// bound the state it keeps for flows that have not finished their
// ClientHello. The Assembler enforces such bounds per flow (Limits); the
// number of flows is the caller's to bound.
//
// A ClientHello does not fit in one packet any more: Go's default key
// share X25519MLKEM768 alone is 1,216 bytes, so quic-go's ClientHello
// spans two or more Initial packets, which the network may reorder,
// duplicate, or coalesce with other packets in one datagram. The
// Assembler decrypts every Initial packet of one client flow (QUIC v1 or
// v2), reassembles the CRYPTO stream by offset, and parses the ClientHello
// once it is complete.
//
// Only the standard library is used; the TLS parsing is by hand, with
// every length checked against what remains.
package quicinitial
