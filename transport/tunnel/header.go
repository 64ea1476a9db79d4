// Package tunnel defines the header that opens an opaque-TCP tunnel stream
// between two sidecars.
//
// A tunnel shares the QUIC connection with HTTP/3 request streams, so it
// must be told apart from them by its first bytes. It is shaped like an
// HTTP/3 frame of a type HTTP/3 does not define:
//
//	Tunnel Header {
//	  Type (i) = 0x2d51c0de,
//	  Length (i),               // of the payload below, at most MaxPayload
//	  Version (8) = 1,
//	  Flags (i),                // reserved, must be 0 in version 1
//	  Target Length (i),
//	  Target (..),              // authority: service name, optional :port
//	  Extension (..) ...,       // TLVs: Type (i), Length (i), Value (..)
//	}
//
// The bytes after the header are the raw TCP byte stream; FIN on the QUIC
// stream is the TCP half-close. A gateway routes by Target without
// touching the rest of the stream.
package tunnel

import (
	"errors"
	"fmt"
	"io"

	"github.com/quic-go/quic-go/quicvarint"
)

// FrameType is the HTTP/3-frame-shaped type that marks a tunnel stream.
// HTTP/3 request streams always begin with HEADERS (0x01).
const FrameType uint64 = 0x2d51c0de

// Version is the only header version this code speaks.
const Version byte = 1

// Limits that keep a hostile peer from making us buffer much.
const (
	MaxPayload       = 1024
	MaxTargetLen     = 255
	maxExtensionKind = 1<<16 - 1
)

// ExtDestPort is the extension that carries the port the app originally
// dialled (the transparent path: an app that dialled a service's virtual
// IP or a pod IP at that port). Its value is the port, 2 bytes, big
// endian. A receiver that does not know it keeps ignoring it (unknown
// kinds are kept), so a tunnel with it still reaches an older sidecar's
// route for Target.
const ExtDestPort uint64 = 1

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("tunnel: malformed header")

// Header is the decoded tunnel header.
type Header struct {
	// Target is the authority the tunnel is for: a service name with an
	// optional ":port".
	Target string
	// Extensions are optional key/value pairs; unknown kinds are kept so a
	// gateway can forward them unchanged.
	Extensions []Extension
}

// Extension is one TLV of the header.
type Extension struct {
	Kind  uint64
	Value []byte
}

// WithDestPort returns h with the ExtDestPort extension set to port
// (replacing any earlier one); port 0 removes it.
func (h Header) WithDestPort(port uint16) Header {
	exts := make([]Extension, 0, len(h.Extensions)+1)
	for _, e := range h.Extensions {
		if e.Kind != ExtDestPort {
			exts = append(exts, e)
		}
	}
	if port != 0 {
		exts = append(exts, Extension{Kind: ExtDestPort, Value: []byte{byte(port >> 8), byte(port)}})
	}
	h.Extensions = exts
	return h
}

// DestPort returns the port of the ExtDestPort extension. ok is false
// when there is none, or its value is not a port (not 2 bytes, or 0):
// the receiver then routes by Target alone.
func (h Header) DestPort() (port uint16, ok bool) {
	for _, e := range h.Extensions {
		if e.Kind == ExtDestPort {
			if len(e.Value) != 2 {
				return 0, false
			}
			port = uint16(e.Value[0])<<8 | uint16(e.Value[1])
			return port, port != 0
		}
	}
	return 0, false
}

// AppendTo appends the wire form of h to b.
func (h Header) AppendTo(b []byte) ([]byte, error) {
	if err := validTarget(h.Target); err != nil {
		return nil, err
	}
	payload := 1 + quicvarint.Len(0) + quicvarint.Len(uint64(len(h.Target))) + len(h.Target)
	for _, e := range h.Extensions {
		if e.Kind > maxExtensionKind {
			return nil, fmt.Errorf("tunnel: extension kind %d out of range", e.Kind)
		}
		payload += quicvarint.Len(e.Kind) + quicvarint.Len(uint64(len(e.Value))) + len(e.Value)
	}
	if payload > MaxPayload {
		return nil, fmt.Errorf("tunnel: header payload %d bytes exceeds %d", payload, MaxPayload)
	}
	b = quicvarint.Append(b, FrameType)
	b = quicvarint.Append(b, uint64(payload))
	b = append(b, Version)
	b = quicvarint.Append(b, 0)
	b = quicvarint.Append(b, uint64(len(h.Target)))
	b = append(b, h.Target...)
	for _, e := range h.Extensions {
		b = quicvarint.Append(b, e.Kind)
		b = quicvarint.Append(b, uint64(len(e.Value)))
		b = append(b, e.Value...)
	}
	return b, nil
}

// IsTunnel reports whether prefix, the first bytes of a stream, start a
// tunnel header. It needs at most 4 bytes; with fewer it answers from what
// it has (a 0x01 first byte is always HTTP/3).
func IsTunnel(prefix []byte) bool {
	t, _, err := quicvarint.Parse(prefix)
	return err == nil && t == FrameType
}

// PrefixLen is how many bytes IsTunnel needs to decide: the length of the
// varint that starts with first.
func PrefixLen(first byte) int { return 1 << (first >> 6) }

// Read decodes a header from r, consuming exactly the header's bytes.
func Read(r io.Reader) (Header, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		br = &byteReader{r: r}
	}
	t, err := quicvarint.Read(br)
	if err != nil {
		return Header{}, fmt.Errorf("%w: reading type: %w", ErrMalformed, eofIsUnexpected(err))
	}
	if t != FrameType {
		return Header{}, fmt.Errorf("%w: type %#x is not a tunnel", ErrMalformed, t)
	}
	n, err := quicvarint.Read(br)
	if err != nil {
		return Header{}, fmt.Errorf("%w: reading length: %w", ErrMalformed, eofIsUnexpected(err))
	}
	if n > MaxPayload {
		return Header{}, fmt.Errorf("%w: payload length %d exceeds %d", ErrMalformed, n, MaxPayload)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return Header{}, fmt.Errorf("%w: reading payload: %w", ErrMalformed, eofIsUnexpected(err))
	}
	return Parse(payload)
}

// Parse decodes a header payload (the bytes after Type and Length).
func Parse(p []byte) (Header, error) {
	if len(p) < 1 {
		return Header{}, fmt.Errorf("%w: empty payload", ErrMalformed)
	}
	if p[0] != Version {
		return Header{}, fmt.Errorf("%w: unsupported version %d", ErrMalformed, p[0])
	}
	p = p[1:]
	flags, n, err := quicvarint.Parse(p)
	if err != nil {
		return Header{}, fmt.Errorf("%w: flags: %w", ErrMalformed, err)
	}
	if flags != 0 {
		return Header{}, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags)
	}
	p = p[n:]
	tl, n, err := quicvarint.Parse(p)
	if err != nil {
		return Header{}, fmt.Errorf("%w: target length: %w", ErrMalformed, err)
	}
	p = p[n:]
	if tl > uint64(len(p)) {
		return Header{}, fmt.Errorf("%w: target length %d exceeds payload", ErrMalformed, tl)
	}
	h := Header{Target: string(p[:tl])}
	if err := validTarget(h.Target); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	p = p[tl:]
	for len(p) > 0 {
		kind, n, err := quicvarint.Parse(p)
		if err != nil || kind > maxExtensionKind {
			return Header{}, fmt.Errorf("%w: extension kind", ErrMalformed)
		}
		p = p[n:]
		vl, n, err := quicvarint.Parse(p)
		if err != nil || vl > uint64(len(p)-n) {
			return Header{}, fmt.Errorf("%w: extension %d length", ErrMalformed, kind)
		}
		p = p[n:]
		h.Extensions = append(h.Extensions, Extension{Kind: kind, Value: append([]byte(nil), p[:vl]...)})
		p = p[vl:]
	}
	return h, nil
}

// validTarget accepts a DNS-style name, optionally with a numeric port. It
// is deliberately narrow: the target becomes a routing key and a log field.
func validTarget(t string) error {
	if t == "" {
		return errors.New("tunnel: empty target")
	}
	if len(t) > MaxTargetLen {
		return fmt.Errorf("tunnel: target longer than %d bytes", MaxTargetLen)
	}
	colon := -1
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		case c == ':' && colon < 0:
			colon = i
		default:
			return fmt.Errorf("tunnel: target %q has invalid byte %#x", t, c)
		}
	}
	if colon == 0 {
		return fmt.Errorf("tunnel: target %q has no name", t)
	}
	if colon > 0 {
		port := t[colon+1:]
		if port == "" || len(port) > 5 {
			return fmt.Errorf("tunnel: target %q has an invalid port", t)
		}
		v := 0
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return fmt.Errorf("tunnel: target %q has an invalid port", t)
			}
			v = v*10 + int(port[i]-'0')
		}
		if v == 0 || v > 65535 {
			return fmt.Errorf("tunnel: target %q port out of range", t)
		}
	}
	return nil
}

func eofIsUnexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

type byteReader struct {
	r   io.Reader
	buf [1]byte
}

func (b *byteReader) ReadByte() (byte, error) {
	_, err := io.ReadFull(b.r, b.buf[:])
	return b.buf[0], err
}
