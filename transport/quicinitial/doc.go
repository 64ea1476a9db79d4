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
// protected with keys derived from the client's Destination Connection ID
// and a salt published per QUIC version (RFC 9001 section 5.2, RFC 9369
// section 3.3.1). That protection keeps middleboxes that do not speak QUIC
// from tampering, but anyone on the path who does can decrypt, and forge,
// Initials. Nothing here is secret, and nothing read here is
// authenticated: an attacker can send an Initial naming any server. That
// is fine for routing — the destination's handshake authenticates both
// ends — but the gateway must not treat the server name as proof of
// anything, and must bound the state it keeps for flows that have not
// finished their ClientHello. The Assembler bounds each flow (Limits); the
// number of flows is the caller's to bound.
//
// A ClientHello does not fit in one packet any more: Go's default key
// share X25519MLKEM768 alone is 1,216 bytes, so quic-go's ClientHello
// spans two or more Initial packets (two datagrams of 1,280 bytes with
// quic-go v0.65 and Go 1.26), which the network may reorder, duplicate, or
// coalesce with other packets in one datagram. The Assembler decrypts
// every Initial packet of one client flow (QUIC v1 or v2), reassembles the
// CRYPTO stream by offset, and parses the ClientHello once it is complete.
//
// # Use in a gateway
//
//   - Key pending flows by source address and original DCID
//     (PeekInitial reads both without decrypting), not by address alone:
//     quic-go sends every connection of a Transport from one socket.
//   - Keep every datagram fed to a flow's Assembler, and once it returns
//     the Hello, send them all to the chosen destination, in the order
//     they came: the destination needs the whole ClientHello too. The
//     Assembler does not retain or modify them.
//   - Errors: see Assembler.Feed for which end the flow and which concern
//     one datagram only.
//
// Only the standard library is used; the TLS parsing is by hand, with
// every length checked against what remains.
package quicinitial
