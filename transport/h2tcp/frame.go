package h2tcp

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/quic-go/quic-go/quicvarint"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The response body of a tunnel stream (inbound to outbound) is framed,
// because net/http's server API cannot end a response (END_STREAM) while
// its handler keeps reading the request body: returning from the handler
// ends the response and, if the client has not finished its body, resets
// the client's direction (RST_STREAM NO_ERROR, RFC 9113 §8.1). A tunnel
// needs each direction to end on its own (TCP half-close), and a reset to
// carry its mesh code, so the inbound side sends:
//
//	Frame {
//	  Type (8),               // 0 DATA, 1 FIN, 2 RESET
//	  DATA:  Length (i) ≥ 1 ≤ maxFrameData, Payload (..),
//	  FIN:   nothing,         // our direction ends; the other may go on
//	  RESET: Code (i) ≤ 0xffffffff,
//	}
//
// followed by RST_STREAM for a reset (the RESET frame only carries the
// code). The outbound-to-inbound direction needs no framing: its
// END_STREAM is FIN and its RST_STREAM a reset (meshcode.Reset, the only
// code the outbound side resets with).
const (
	frameData  = 0x00
	frameFIN   = 0x01
	frameReset = 0x02
)

// maxFrameData bounds one DATA frame: a reader never needs more than this
// to make progress, and the writer splits larger writes.
const maxFrameData = 1 << 20

// errMalformedFrame is wrapped by every framing error: the peer is broken
// or hostile; the stream is reset.
var errMalformedFrame = errors.New("h2tcp: malformed tunnel frame")

// appendFrameHeader appends the header of a frame of type typ whose
// argument (DATA length or RESET code) is n.
func appendFrameHeader(b []byte, typ byte, n uint64) []byte {
	b = append(b, typ)
	if typ != frameFIN {
		b = quicvarint.Append(b, n)
	}
	return b
}

// frameReader decodes the frames of a response body into the byte stream
// they carry: DATA payloads; io.EOF at FIN; a *meshcode.StreamError (Remote)
// at RESET. A body that ends without FIN or RESET is a reset: the inbound
// side went away mid-stream.
type frameReader struct {
	r         *bufio.Reader
	remaining uint64 // unread bytes of the current DATA frame
	err       error  // sticky terminal result
}

func newFrameReader(r io.Reader) *frameReader { return &frameReader{r: bufio.NewReaderSize(r, 16<<10)} }

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	for f.remaining == 0 {
		if err := f.next(); err != nil {
			f.err = err
			return 0, err
		}
	}
	if uint64(len(p)) > f.remaining {
		p = p[:f.remaining]
	}
	n, err := f.r.Read(p)
	f.remaining -= uint64(n)
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("%w: body ended inside a DATA frame", errTruncated)
		}
		f.err = err
		if n > 0 {
			return n, nil
		}
	}
	return n, err
}

// errTruncated: the body ended without FIN or RESET.
var errTruncated = errors.New("h2tcp: tunnel ended without FIN")

// next reads one frame header.
func (f *frameReader) next() error {
	typ, err := f.r.ReadByte()
	if err != nil {
		if err == io.EOF {
			return errTruncated
		}
		return err
	}
	switch typ {
	case frameData:
		n, err := quicvarint.Read(f.r)
		if err != nil {
			return truncated(err)
		}
		if n == 0 || n > maxFrameData {
			return fmt.Errorf("%w: DATA length %d", errMalformedFrame, n)
		}
		f.remaining = n
		return nil
	case frameFIN:
		return io.EOF
	case frameReset:
		code, err := quicvarint.Read(f.r)
		if err != nil {
			return truncated(err)
		}
		if code > 0xffffffff {
			return fmt.Errorf("%w: RESET code %#x", errMalformedFrame, code)
		}
		return &meshcode.StreamError{Code: meshcode.Code(code), Remote: true}
	default:
		return fmt.Errorf("%w: type %#x", errMalformedFrame, typ)
	}
}

func truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errTruncated
	}
	return err
}
