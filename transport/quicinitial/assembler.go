package quicinitial

import (
	"bytes"
	"fmt"
	"math/bits"
)

// Default limits of one flow (see Limits).
const (
	// DefaultMaxDatagrams: a ClientHello with a post-quantum key share
	// takes two Initial packets, a long server name and many ALPN
	// protocols a third; the rest is room for duplicates, retransmissions
	// and datagrams that carry no Initial (0-RTT).
	DefaultMaxDatagrams = 8
	// DefaultMaxCryptoBytes: Go's ClientHello with X25519MLKEM768 is about
	// 1.6 KB; 16 KiB leaves room for large session tickets and long ALPN
	// lists while bounding what an attacker can make a flow buffer.
	DefaultMaxCryptoBytes = 16 << 10
)

// maxPacketsPerDatagram bounds the coalesced packets Feed looks at in one
// datagram. A client's datagram holds one Initial, perhaps followed by a
// 0-RTT packet; without a bound, a 64 KiB datagram of tiny forged
// Initials would cost a thousand decryptions.
const maxPacketsPerDatagram = 8

// Limits bound what one flow may cost before its ClientHello is complete:
// Initial keys are public, so anyone can send well-formed Initials, and a
// gateway must not buffer or decrypt without end for them.
type Limits struct {
	// MaxDatagrams is how many datagrams Feed takes (whatever they hold)
	// before it fails with ErrTooLarge; 0 means DefaultMaxDatagrams.
	MaxDatagrams int
	// MaxCryptoBytes is how far into the CRYPTO stream a flow may write
	// and how large its ClientHello may be; 0 means
	// DefaultMaxCryptoBytes. The buffer grows only as far as data
	// arrives.
	MaxCryptoBytes int
}

func (l Limits) maxDatagrams() int {
	if l.MaxDatagrams > 0 {
		return l.MaxDatagrams
	}
	return DefaultMaxDatagrams
}

func (l Limits) maxCryptoBytes() int {
	if l.MaxCryptoBytes > 0 {
		return l.MaxCryptoBytes
	}
	return DefaultMaxCryptoBytes
}

// Hello is what a client's Initial packets say about the connection it
// opens. None of it is authenticated (see the package documentation).
type Hello struct {
	// ServerName is the TLS server_name (SNI) as sent; "" if none.
	ServerName string
	// ALPN lists the client's application protocols in its order of
	// preference; nil if it offered none.
	ALPN []string
	// DCID is the client's original Destination Connection ID, SCID its
	// Source Connection ID; Version is the QUIC version of its Initials.
	DCID, SCID []byte
	Version    uint32
}

// Assembler collects the Initial packets of one client flow (one source
// address and original Destination Connection ID) until the ClientHello
// in them is complete. The zero value is ready to use, with default
// Limits; set Limits before the first Feed. An Assembler is not safe for
// concurrent use.
type Assembler struct {
	Limits Limits

	fed int // datagrams taken by Feed

	// Set by the first Initial packet that decrypts: the connection this
	// flow belongs to. Packets of other connections are not mixed in.
	started    bool
	version    uint32
	dcid, scid []byte
	keys       *initialKeys
	largestPN  uint64 // the largest packet number decrypted (if started)

	// The CRYPTO stream: crypto[off] is valid where bit off of have is
	// set; crypto[:contig] is the received prefix.
	crypto []byte
	have   []uint64
	contig int

	// scratch holds a copy of the packet being decrypted: header
	// protection and decryption work in place, and the caller's datagram
	// must not change (a gateway relays it as it came).
	scratch []byte

	done  bool
	hello Hello
	err   error // sticky: the flow is beyond repair
}

// Feed takes one UDP datagram of the flow, in any order, duplicates
// included. It decrypts the Initial packets in it (skipping coalesced
// 0-RTT and Handshake packets, and packets of other connections after the
// first), adds their CRYPTO data, and once the ClientHello is complete
// returns it with complete == true; from then on Feed returns the same
// Hello without looking at what it is given. The datagram is not
// modified or retained. Hello's slices must not be modified.
//
// Errors wrap this package's sentinels. ErrNotInitial,
// ErrUnsupportedVersion, ErrDecrypt and ErrOtherConnection concern this
// datagram only (the datagram may be another connection's, or forged):
// the flow's state is as before, and more datagrams may follow. After
// ErrTooLarge, ErrProtocol, ErrClosed or ErrMalformedHello the flow is
// done: every later Feed returns the same error.
func (a *Assembler) Feed(datagram []byte) (Hello, bool, error) {
	if a.done {
		return a.hello, true, nil
	}
	if a.err != nil {
		return Hello{}, false, a.err
	}
	if a.fed >= a.Limits.maxDatagrams() {
		return Hello{}, false, a.fail(fmt.Errorf("%w: %d datagrams without a complete ClientHello", ErrTooLarge, a.fed))
	}
	a.fed++
	if len(datagram) < MinDatagramSize {
		return Hello{}, false, fmt.Errorf("%w: datagram of %d bytes, below %d", ErrNotInitial, len(datagram), MinDatagramSize)
	}
	for p, n := 0, 0; p < len(datagram) && n < maxPacketsPerDatagram; n++ {
		first := p == 0
		h, err := parseLongHeader(datagram[p:])
		if err != nil {
			if first {
				return Hello{}, false, err
			}
			// A short-header packet or padding ends the long-header
			// packets of a datagram: nothing after it is ours.
			break
		}
		pkt := datagram[p : p+h.end]
		p += h.end
		if h.typ == typeRetry {
			if first {
				return Hello{}, false, fmt.Errorf("%w: a Retry packet (sent by servers)", ErrNotInitial)
			}
			break
		}
		if a.started && (h.Version != a.version || !bytes.Equal(h.DCID, a.dcid)) {
			if first {
				return Hello{}, false, fmt.Errorf("%w: version 0x%08x DCID %x, the flow's is 0x%08x %x",
					ErrOtherConnection, h.Version, h.DCID, a.version, a.dcid)
			}
			continue // RFC 9000 section 12.2: ignore coalesced packets of another connection
		}
		if h.typ != typeInitial {
			if first {
				return Hello{}, false, fmt.Errorf("%w: datagram starts with a long-header packet of type %d", ErrNotInitial, h.typ)
			}
			continue
		}
		if err := a.packet(pkt, h); err != nil {
			if !first && a.err == nil {
				continue // a damaged or forged coalesced packet is dropped alone
			}
			return Hello{}, false, err
		}
		if done, err := a.check(); err != nil || done {
			return a.hello, done, err
		}
	}
	return Hello{}, false, nil
}

// Parse reads the ClientHello from one datagram: Feed on a fresh
// Assembler with default Limits, with ErrNeedMore if the ClientHello
// continues in other datagrams. (With X25519MLKEM768, Go's default, it
// does; a gateway uses an Assembler per flow.)
func Parse(datagram []byte) (Hello, error) {
	var a Assembler
	h, done, err := a.Feed(datagram)
	if err != nil {
		return Hello{}, err
	}
	if !done {
		return Hello{}, ErrNeedMore
	}
	return h, nil
}

// Reset makes the Assembler ready for another flow, keeping its Limits
// and buffers. Hellos it returned stay valid.
func (a *Assembler) Reset() {
	*a = Assembler{
		Limits:  a.Limits,
		crypto:  a.crypto[:0],
		have:    a.have[:0],
		scratch: a.scratch[:0],
	}
	clear(a.have[:cap(a.have)])
}

// fail makes err the flow's final error.
func (a *Assembler) fail(err error) error {
	a.err = err
	return err
}

// packet decrypts one Initial packet (RFC 9001 section 5) and takes its
// frames.
func (a *Assembler) packet(pkt []byte, h longHeader) error {
	keys := a.keys
	if !a.started {
		// Keys are kept only once a packet decrypts with them, so that a
		// forged first datagram cannot pin the flow to its DCID.
		var err error
		if keys, err = newInitialKeys(h.Version, h.DCID); err != nil {
			return fmt.Errorf("deriving Initial keys: %w", err)
		}
	}
	pnOff := h.pnOffset
	if len(pkt) < pnOff+4+sampleLen {
		return fmt.Errorf("%w: packet of %d bytes, too short for the header protection sample", ErrNotInitial, len(pkt))
	}
	buf := append(a.scratch[:0], pkt...)
	a.scratch = buf

	// Remove header protection (RFC 9001 section 5.4): the mask is AES-ECB
	// of a ciphertext sample; it hides the low 4 bits of the first byte
	// (reserved bits and packet number length) and the packet number.
	var mask [aesBlock]byte
	keys.hp.Encrypt(mask[:], buf[pnOff+4:pnOff+4+sampleLen])
	buf[0] ^= mask[0] & 0x0f
	pnLen := int(buf[0]&0x03) + 1
	var truncated uint64
	for i := range pnLen {
		buf[pnOff+i] ^= mask[1+i]
		truncated = truncated<<8 | uint64(buf[pnOff+i])
	}
	pn := decodePacketNumber(a.largestPN, a.started, truncated, pnLen)
	hdrEnd := pnOff + pnLen
	nonce := keys.nonce(pn)
	plain, err := keys.aead.Open(buf[hdrEnd:hdrEnd], nonce[:], buf[hdrEnd:], buf[:hdrEnd])
	if err != nil {
		return fmt.Errorf("%w: version 0x%08x DCID %x packet number %d", ErrDecrypt, h.Version, h.DCID, pn)
	}

	if !a.started {
		a.started = true
		a.version = h.Version
		a.dcid = bytes.Clone(h.DCID)
		a.scid = bytes.Clone(h.SCID)
		a.keys = keys
		a.largestPN = pn
	} else if pn > a.largestPN {
		a.largestPN = pn
	}
	// Checked only after decryption, as RFC 9000 section 17.2 requires:
	// before it, the bits may be an attacker's.
	if buf[0]&0x0c != 0 {
		return a.fail(fmt.Errorf("%w: reserved header bits set", ErrProtocol))
	}
	return a.frames(plain)
}

const aesBlock = 16

// decodePacketNumber recovers a full packet number from its truncated
// pnLen-byte encoding: the candidate closest to the next expected one
// (RFC 9000 appendix A.3).
func decodePacketNumber(largest uint64, haveLargest bool, truncated uint64, pnLen int) uint64 {
	expected := uint64(0)
	if haveLargest {
		expected = largest + 1
	}
	win := uint64(1) << (8 * pnLen)
	hwin := win / 2
	candidate := expected&^(win-1) | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// Frame types allowed in Initial packets (RFC 9000 section 12.4, table 3).
const (
	framePadding         = 0x00
	framePing            = 0x01
	frameACK             = 0x02
	frameACKECN          = 0x03
	frameCrypto          = 0x06
	frameConnectionClose = 0x1c // the transport-level one; 0x1d is not allowed in Initials
)

// frames walks a decrypted Initial payload and takes its CRYPTO data.
func (a *Assembler) frames(b []byte) error {
	if len(b) == 0 {
		return a.fail(fmt.Errorf("%w: packet without frames", ErrProtocol))
	}
	for len(b) > 0 {
		typ, n := varint(b)
		if n == 0 {
			return a.fail(fmt.Errorf("%w: truncated frame type", ErrProtocol))
		}
		b = b[n:]
		var ok bool
		switch typ {
		case framePadding:
			b = bytes.TrimLeft(b, "\x00")
			ok = true
		case framePing:
			ok = true
		case frameACK, frameACKECN:
			b, ok = skipACK(b, typ == frameACKECN)
		case frameCrypto:
			var off, length uint64
			if off, length, b, ok = cryptoFrame(b); ok {
				if err := a.store(off, length, b[:length]); err != nil {
					return err
				}
				b = b[length:]
			}
		case frameConnectionClose:
			return a.fail(connectionClose(b))
		default:
			return a.fail(fmt.Errorf("%w: frame type 0x%x not allowed in Initial packets", ErrProtocol, typ))
		}
		if !ok {
			return a.fail(fmt.Errorf("%w: truncated frame of type 0x%x", ErrProtocol, typ))
		}
	}
	return nil
}

// varints reads count varints off the front of b.
func varints(b []byte, count int) (rest []byte, ok bool) {
	for range count {
		_, n := varint(b)
		if n == 0 {
			return b, false
		}
		b = b[n:]
	}
	return b, true
}

// skipACK skips an ACK frame's body (RFC 9000 section 19.3): a client
// retransmitting its Initials after the server's may acknowledge them.
func skipACK(b []byte, ecn bool) ([]byte, bool) {
	b, ok := varints(b, 2) // Largest Acknowledged, ACK Delay
	if !ok {
		return b, false
	}
	ranges, n := varint(b)
	if n == 0 {
		return b, false
	}
	b = b[n:]
	// Each range is two varints of at least one byte: a count beyond what
	// is left is malformed, whatever its value (and would not fit an int).
	if ranges > uint64(len(b)/2) {
		return b, false
	}
	if b, ok = varints(b, 1+2*int(ranges)); !ok { // First ACK Range, then Gap and Length pairs
		return b, false
	}
	if ecn {
		return varints(b, 3)
	}
	return b, true
}

// cryptoFrame reads a CRYPTO frame's offset and length (RFC 9000 section
// 19.6); rest starts with its data, at least length bytes.
func cryptoFrame(b []byte) (off, length uint64, rest []byte, ok bool) {
	off, n := varint(b)
	if n == 0 {
		return 0, 0, b, false
	}
	b = b[n:]
	length, n = varint(b)
	if n == 0 || length > uint64(len(b)-n) {
		return 0, 0, b, false
	}
	return off, length, b[n:], true
}

// connectionClose describes a CONNECTION_CLOSE frame's body (RFC 9000
// section 19.19) as an error.
func connectionClose(b []byte) error {
	code, n := varint(b)
	if n == 0 {
		return fmt.Errorf("%w: truncated CONNECTION_CLOSE", ErrProtocol)
	}
	b, ok := varints(b[n:], 1) // the frame type that caused it
	if !ok {
		return fmt.Errorf("%w: truncated CONNECTION_CLOSE", ErrProtocol)
	}
	reasonLen, n := varint(b)
	if n == 0 || reasonLen > uint64(len(b)-n) {
		return fmt.Errorf("%w: truncated CONNECTION_CLOSE", ErrProtocol)
	}
	reason := b[n : n+int(reasonLen)]
	const maxReason = 64 // the reason is the peer's text: keep logs bounded
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	return fmt.Errorf("%w: error code 0x%x, reason %q", ErrClosed, code, reason)
}

// store writes CRYPTO data at its stream offset. Overlapping data
// (retransmissions) simply overwrites: all of it is the same client's
// ClientHello, and none of it is authenticated anyway.
func (a *Assembler) store(off, length uint64, data []byte) error {
	limit := uint64(a.Limits.maxCryptoBytes())
	if off > limit || length > limit-off {
		return a.fail(fmt.Errorf("%w: CRYPTO data up to offset %d, limit %d", ErrTooLarge, off+length, limit))
	}
	start, end := int(off), int(off+length)
	if end > len(a.crypto) {
		a.crypto = grow(a.crypto, end)
		a.have = grow(a.have, (end+63)/64)
	}
	copy(a.crypto[start:end], data)
	for i := start; i < end; {
		if i%64 == 0 && end-i >= 64 {
			a.have[i/64] = ^uint64(0)
			i += 64
			continue
		}
		a.have[i/64] |= 1 << (i % 64)
		i++
	}
	for a.contig < len(a.crypto) {
		shift := a.contig % 64
		ones := min(bits.TrailingZeros64(^(a.have[a.contig/64] >> shift)), 64-shift)
		a.contig += ones
		if ones < 64-shift {
			break
		}
	}
	return nil
}

// grow extends s to length n, reusing its capacity; the words it adds
// past the old length are zero (Reset clears the whole capacity of the
// bitmap; the bytes of crypto past its length are ignored until written).
func grow[T any](s []T, n int) []T {
	if n <= cap(s) {
		return s[:n]
	}
	out := make([]T, n, max(n, 2*cap(s)))
	copy(out, s)
	return out
}

// check parses the ClientHello once the CRYPTO stream holds all of it.
func (a *Assembler) check() (bool, error) {
	if a.contig < 4 {
		return false, nil
	}
	if a.crypto[0] != handshakeTypeClientHello {
		return false, a.fail(fmt.Errorf("%w: first handshake message has type %d", ErrMalformedHello, a.crypto[0]))
	}
	need := 4 + (int(a.crypto[1])<<16 | int(a.crypto[2])<<8 | int(a.crypto[3]))
	if need > a.Limits.maxCryptoBytes() {
		return false, a.fail(fmt.Errorf("%w: ClientHello of %d bytes, limit %d", ErrTooLarge, need, a.Limits.maxCryptoBytes()))
	}
	if a.contig < need {
		return false, nil
	}
	h, err := ParseClientHello(a.crypto[:need])
	if err != nil {
		return false, a.fail(err)
	}
	h.DCID, h.SCID, h.Version = a.dcid, a.scid, a.version
	a.hello, a.done = h, true
	return true, nil
}
