// Package h2guard watches the frames of an HTTP/2 connection that an
// http2.Server serves and closes the connection when its client resets
// streams, or makes the server reset them, at an abusive rate (HTTP/2
// "Rapid Reset", CVE-2023-44487, and "MadeYouReset", CVE-2025-8671). It
// also lets a handler wait until the server has seen every frame that had
// arrived when the handler started, so a stream that was reset in the same
// burst as it was opened is known to be dead before any upstream work
// starts for it.
package h2guard

import "encoding/binary"

// HTTP/2 wire constants (RFC 9113).
const (
	frameHeaderLen = 9
	// ClientPreface starts every client connection; it is not a frame.
	ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	frameHeaders   = 0x1
	frameRSTStream = 0x3
	frameGoAway    = 0x7

	codeNo             = 0x0
	codeInternal       = 0x2
	codeCancel         = 0x8
	codeEnhanceYourCal = 0xb
)

// Frame is what the splitter reports for each complete frame: its header
// and the first bytes of its payload (enough for a RST_STREAM's error
// code).
type Frame struct {
	Length   uint32
	Type     uint8
	Flags    uint8
	StreamID uint32
	// Head holds the first min(Length, 4) payload bytes.
	Head [4]byte
}

// ErrorCode is the error code of a RST_STREAM frame.
func (f Frame) ErrorCode() uint32 { return binary.BigEndian.Uint32(f.Head[:]) }

// splitter finds frame boundaries in an HTTP/2 byte stream fed to it in
// arbitrary pieces. Its state is a few fixed-size fields whatever it is
// fed: it never buffers a payload, never allocates and never fails (a
// stream that is not HTTP/2 is the server's to refuse).
type splitter struct {
	preface int // bytes of the client preface still to skip
	hdr     [frameHeaderLen]byte
	hdrN    int
	cur     Frame
	left    uint32 // payload bytes of cur still to come
	inFrame bool   // header complete, payload pending
	frames  uint64 // complete frames seen
}

func newSplitter(skipPreface bool) splitter {
	s := splitter{}
	if skipPreface {
		s.preface = len(ClientPreface)
	}
	return s
}

// atBoundary reports whether the bytes fed so far end exactly between two
// frames (so a frame may be inserted there).
func (s *splitter) atBoundary() bool {
	return s.preface == 0 && s.hdrN == 0 && !s.inFrame
}

// feed consumes p and calls onFrame for every frame that p completes.
func (s *splitter) feed(p []byte, onFrame func(Frame)) {
	for len(p) > 0 {
		switch {
		case s.preface > 0:
			n := min(s.preface, len(p))
			s.preface -= n
			p = p[n:]
		case !s.inFrame:
			n := copy(s.hdr[s.hdrN:], p)
			s.hdrN += n
			p = p[n:]
			if s.hdrN < frameHeaderLen {
				return
			}
			s.hdrN = 0
			s.cur = Frame{
				Length:   uint32(s.hdr[0])<<16 | uint32(s.hdr[1])<<8 | uint32(s.hdr[2]),
				Type:     s.hdr[3],
				Flags:    s.hdr[4],
				StreamID: binary.BigEndian.Uint32(s.hdr[5:]) & 0x7fffffff,
			}
			s.left = s.cur.Length
			s.inFrame = true
			if s.left == 0 {
				s.complete(onFrame)
			}
		default:
			// Keep the first payload bytes, skip the rest.
			if off := s.cur.Length - s.left; off < uint32(len(s.cur.Head)) {
				copy(s.cur.Head[off:], p[:min(uint32(len(p)), s.left)])
			}
			n := min(uint32(len(p)), s.left)
			s.left -= n
			p = p[n:]
			if s.left == 0 {
				s.complete(onFrame)
			}
		}
	}
}

func (s *splitter) complete(onFrame func(Frame)) {
	s.inFrame = false
	s.frames++
	if onFrame != nil {
		onFrame(s.cur)
	}
}

// goAwayFrame encodes a GOAWAY with the given last stream ID and error
// code and no debug data.
func goAwayFrame(lastStreamID, code uint32) []byte {
	b := make([]byte, frameHeaderLen+8)
	b[2] = 8 // length
	b[3] = frameGoAway
	binary.BigEndian.PutUint32(b[9:], lastStreamID&0x7fffffff)
	binary.BigEndian.PutUint32(b[13:], code)
	return b
}
