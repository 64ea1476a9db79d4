package quicinitial

import "errors"

// Errors returned (wrapped, with details) by this package. Test for them
// with errors.Is.
var (
	// ErrNotInitial: the datagram does not start with a QUIC long-header
	// Initial packet from a client, or that packet is truncated or
	// malformed (a short-header or Version Negotiation packet, a Retry,
	// a datagram below MinDatagramSize, garbage).
	ErrNotInitial = errors.New("quicinitial: not a QUIC client Initial")
	// ErrUnsupportedVersion: a long-header packet of a QUIC version other
	// than v1 and v2; its Initial protection is unknown. (A gateway may
	// answer with a Version Negotiation packet.)
	ErrUnsupportedVersion = errors.New("quicinitial: unsupported QUIC version")
	// ErrDecrypt: an Initial packet failed authentication: not sent by a
	// client for this Destination Connection ID, or damaged.
	ErrDecrypt = errors.New("quicinitial: QUIC Initial packet failed authentication")
	// ErrOtherConnection: an Initial of another connection (another
	// Destination Connection ID or version) than the one the Assembler
	// has seen first. One client UDP socket carries many QUIC connections
	// (quic-go multiplexes all of a Transport's dials on it), so flows
	// are keyed by source address and original DCID, not address alone.
	ErrOtherConnection = errors.New("quicinitial: an Initial of another QUIC connection")
	// ErrProtocol: a decrypted Initial breaks QUIC's rules (a frame type
	// not allowed in Initial packets, a malformed frame, reserved bits
	// set, no frames).
	ErrProtocol = errors.New("quicinitial: QUIC protocol violation in Initial")
	// ErrClosed: the client sent CONNECTION_CLOSE in an Initial: it gave
	// up before its ClientHello was complete.
	ErrClosed = errors.New("quicinitial: client closed the connection in its Initial")
	// ErrMalformedHello: the CRYPTO stream does not hold a well-formed
	// TLS ClientHello.
	ErrMalformedHello = errors.New("quicinitial: malformed TLS ClientHello")
	// ErrTooLarge: the flow exceeded its Limits (datagrams fed, or CRYPTO
	// bytes needed) before its ClientHello was complete.
	ErrTooLarge = errors.New("quicinitial: QUIC Initial flow exceeds limits")
	// ErrNeedMore (from Parse only): the ClientHello continues in Initial
	// packets of other datagrams. The Assembler reports this as
	// complete == false instead.
	ErrNeedMore = errors.New("quicinitial: ClientHello incomplete: need more Initial packets")
)
