package quicinitial

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Transport error codes a refusal may carry (RFC 9000 section 20.1).
const (
	// ConnectionRefused: "the server refused to accept a new
	// connection". quic-go reports it to the dialer as a remote
	// *quic.TransportError with ErrorCode quic.ConnectionRefused.
	ConnectionRefused uint64 = 0x02
)

// maxReasonLen bounds the reason phrase of a refusal: it is for logs,
// and the whole packet stays far below the smallest datagram a QUIC path
// must carry (1200 bytes).
const maxReasonLen = 256

// CloseInitial builds the datagram a server (or a gateway on its path)
// sends to refuse a client's connection before any handshake: one Initial
// packet, protected with the server's Initial keys, carrying a
// CONNECTION_CLOSE frame of type 0x1c with errorCode and reason (RFC 9000
// section 10.2.3 allows exactly this frame in an Initial). Those keys
// derive from the client's original Destination Connection ID (RFC 9001
// section 5.2), which anyone who read the client's Initial knows, so a
// party that holds no key of the connection's can send it: h is what the
// Assembler read from that Initial (Version, DCID, SCID).
//
// The client takes it as the server's answer: quic-go ends the dial at
// once with a remote transport error instead of retransmitting its
// Initials until its handshake timeout. It is not authenticated beyond
// that (any on-path party could forge it), which is why it may only say
// "refused", never carry anything the client would trust.
func CloseInitial(h Hello, errorCode uint64, reason string) ([]byte, error) {
	switch {
	case h.Version != Version1 && h.Version != Version2:
		return nil, fmt.Errorf("%w: 0x%08x", ErrUnsupportedVersion, h.Version)
	case len(h.DCID) > maxConnIDLen || len(h.SCID) > maxConnIDLen:
		return nil, errors.New("quicinitial: connection ID longer than 20 bytes")
	case errorCode >= 1<<62:
		return nil, fmt.Errorf("quicinitial: error code %d is not a QUIC varint", errorCode)
	}
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	keys, err := newInitialKeysFor(h.Version, h.DCID, labelServer)
	if err != nil {
		return nil, fmt.Errorf("deriving server Initial keys: %w", err)
	}

	// CONNECTION_CLOSE (0x1c): error code, the frame type that caused it
	// (0: none in particular), the reason phrase.
	payload := []byte{0x1c}
	payload = appendVarint(payload, errorCode)
	payload = appendVarint(payload, 0)
	payload = appendVarint(payload, uint64(len(reason)))
	payload = append(payload, reason...)

	// A 4-byte packet number (0, the server's first) makes the header
	// protection sample, taken 4 bytes after the packet number starts,
	// fall inside the payload and tag with any reason length.
	const pnLen = 4
	typeBits := byte(0) // Initial in v1
	if h.Version == Version2 {
		typeBits = 1 // RFC 9369 section 3.2
	}
	b := make([]byte, 0, 64+len(h.DCID)+len(h.SCID)+len(payload)+tagLen)
	b = append(b, 0xc0|typeBits<<4|(pnLen-1))
	b = binary.BigEndian.AppendUint32(b, h.Version)
	// The client's Source Connection ID is the destination of the
	// server's packets; the source is the ID the client chose for the
	// server, as quic-go's own refusals do.
	b = append(b, byte(len(h.SCID)))
	b = append(b, h.SCID...)
	b = append(b, byte(len(h.DCID)))
	b = append(b, h.DCID...)
	b = append(b, 0) // token length: servers send none
	// The length field is always 2 bytes here (payload < 16384).
	b = binary.BigEndian.AppendUint16(b, 0x4000|uint16(pnLen+len(payload)+tagLen))
	pnOff := len(b)
	b = append(b, 0, 0, 0, 0) // packet number 0
	return keys.seal(b, pnOff, pnLen, 0, payload), nil
}

// seal protects one long-header packet (RFC 9001 section 5): hdr is its
// header up to and including the packet number pn (pnLen bytes at
// pnOff), payload its frames. The AEAD output is appended to hdr, then
// header protection applied: the mask, AES-ECB of a ciphertext sample
// taken 4 bytes after the packet number starts, hides the low 4 bits of
// the first byte and the packet number, as the Assembler removes it. The
// payload must be long enough for the sample (pnLen + len(payload) >= 4).
func (k *initialKeys) seal(hdr []byte, pnOff, pnLen int, pn uint64, payload []byte) []byte {
	nonce := k.nonce(pn)
	b := k.aead.Seal(hdr, nonce[:], payload, hdr)
	var mask [aesBlock]byte
	k.hp.Encrypt(mask[:], b[pnOff+4:pnOff+4+sampleLen])
	b[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		b[pnOff+i] ^= mask[1+i]
	}
	return b
}

// appendVarint appends v as a QUIC variable-length integer (RFC 9000
// section 16) in its shortest form; v < 2^62.
func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return binary.BigEndian.AppendUint16(b, 0x4000|uint16(v))
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, 0x8000_0000|uint32(v))
	}
	return binary.BigEndian.AppendUint64(b, 0xc000_0000_0000_0000|v)
}
