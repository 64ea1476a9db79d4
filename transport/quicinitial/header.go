package quicinitial

import (
	"encoding/binary"
	"fmt"
)

// The QUIC versions whose Initial packets this package reads. quic-go
// clients use Version1 unless quic.Config.Versions puts Version2 first;
// both have the same packet layout and differ in the Initial salt, the
// HKDF labels and the long-header type bits.
const (
	Version1 uint32 = 0x00000001 // RFC 9000
	Version2 uint32 = 0x6b3343cf // RFC 9369
)

// MinDatagramSize is the smallest UDP payload that may carry a client's
// Initial packet: clients pad such datagrams to at least 1200 bytes and a
// server must discard smaller ones (RFC 9000 section 14.1), which also
// keeps a gateway from being an amplifier for small spoofed datagrams.
const MinDatagramSize = 1200

// maxConnIDLen is the longest connection ID QUIC v1 and v2 allow.
const maxConnIDLen = 20

type packetType uint8

const (
	typeInitial packetType = iota
	type0RTT
	typeHandshake
	typeRetry
)

// packetTypeOf maps a long header's two type bits to the packet type:
// QUIC v2 renumbered them (RFC 9369 section 3.2) so that middleboxes
// written for v1 do not ossify on the values.
func packetTypeOf(version uint32, bits byte) packetType {
	if version == Version2 {
		return [4]packetType{typeRetry, typeInitial, type0RTT, typeHandshake}[bits&3]
	}
	return packetType(bits & 3)
}

// Header is what PeekInitial reads from the unprotected part of a
// client's Initial packet.
type Header struct {
	Version uint32
	// DCID is the Destination Connection ID the client chose; the Initial
	// keys derive from it, and until the server answers, every Initial of
	// the connection carries it. SCID is the client's own connection ID:
	// the destination of the server's packets.
	DCID, SCID []byte
}

// longHeader is one parsed long-header packet; the slices alias the
// datagram.
type longHeader struct {
	Header
	typ      packetType
	pnOffset int // where the (protected) packet number starts
	end      int // where the packet ends: the next coalesced packet starts here
}

// PeekInitial reads the header of the first packet of a datagram without
// decrypting anything: the cheap test for a gateway's fast path ("does
// this datagram start a new flow, and of which connection?"). It accepts
// a datagram of at least MinDatagramSize bytes whose first packet is a
// QUIC v1 or v2 Initial with a consistent length. The returned slices
// alias datagram. A nil error does not mean the packet is genuine: only
// Assembler.Feed decrypts it.
func PeekInitial(datagram []byte) (Header, error) {
	if len(datagram) < MinDatagramSize {
		return Header{}, fmt.Errorf("%w: datagram of %d bytes, below %d", ErrNotInitial, len(datagram), MinDatagramSize)
	}
	h, err := parseLongHeader(datagram)
	if err != nil {
		return Header{}, err
	}
	if h.typ != typeInitial {
		return Header{}, fmt.Errorf("%w: long-header packet type %d", ErrNotInitial, h.typ)
	}
	return h.Header, nil
}

// IsInitial reports whether PeekInitial accepts datagram.
func IsInitial(datagram []byte) bool {
	_, err := PeekInitial(datagram)
	return err == nil
}

// parseLongHeader parses the long header at the start of b (RFC 9000
// section 17.2): for every type but Retry up to the packet number, whose
// length is still under header protection. Every field is checked
// against len(b).
func parseLongHeader(b []byte) (longHeader, error) {
	var h longHeader
	if len(b) < 7 {
		return h, fmt.Errorf("%w: %d bytes, too short for a long header", ErrNotInitial, len(b))
	}
	if b[0]&0x80 == 0 {
		return h, fmt.Errorf("%w: short-header packet", ErrNotInitial)
	}
	h.Version = binary.BigEndian.Uint32(b[1:5])
	switch h.Version {
	case Version1, Version2:
	case 0:
		return h, fmt.Errorf("%w: Version Negotiation packet", ErrNotInitial)
	default:
		return h, fmt.Errorf("%w: 0x%08x", ErrUnsupportedVersion, h.Version)
	}
	p := 5
	var ok bool
	if h.DCID, p, ok = connID(b, p); !ok {
		return h, fmt.Errorf("%w: bad destination connection ID", ErrNotInitial)
	}
	if h.SCID, p, ok = connID(b, p); !ok {
		return h, fmt.Errorf("%w: bad source connection ID", ErrNotInitial)
	}
	h.typ = packetTypeOf(h.Version, b[0]>>4)
	if h.typ == typeRetry {
		// No length field: a Retry fills the rest of its datagram. Only
		// servers send it.
		h.end = len(b)
		return h, nil
	}
	if h.typ == typeInitial {
		tokenLen, n := varint(b[p:])
		if n == 0 || tokenLen > uint64(len(b)-p-n) {
			return h, fmt.Errorf("%w: bad token length", ErrNotInitial)
		}
		p += n + int(tokenLen)
	}
	length, n := varint(b[p:])
	if n == 0 || length > uint64(len(b)-p-n) {
		return h, fmt.Errorf("%w: packet length field exceeds the datagram", ErrNotInitial)
	}
	h.pnOffset = p + n
	h.end = h.pnOffset + int(length)
	return h, nil
}

// connID reads a length-prefixed connection ID at b[p:].
func connID(b []byte, p int) (id []byte, next int, ok bool) {
	if p >= len(b) {
		return nil, p, false
	}
	n := int(b[p])
	p++
	if n > maxConnIDLen || n > len(b)-p {
		return nil, p, false
	}
	return b[p : p+n], p + n, true
}

// varint decodes a QUIC variable-length integer (RFC 9000 section 16)
// from the start of b; n == 0 if b is too short.
func varint(b []byte) (v uint64, n int) {
	if len(b) == 0 {
		return 0, 0
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0
	}
	v = uint64(b[0] & 0x3f)
	for _, c := range b[1:n] {
		v = v<<8 | uint64(c)
	}
	return v, n
}
