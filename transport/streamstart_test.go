package transport

import (
	"bytes"
	"io"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"

	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// peekBuffer is a stream start held in memory.
type peekBuffer struct{ r *bytes.Reader }

func (p *peekBuffer) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *peekBuffer) Peek(b []byte) (int, error) {
	pos, _ := p.r.Seek(0, io.SeekCurrent)
	n, err := io.ReadFull(p.r, b)
	p.r.Seek(pos, io.SeekStart)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

func FuzzStreamStart(f *testing.F) {
	valid, _ := tunnel.Header{Target: "web:8080"}.AppendTo(nil)
	f.Add(valid)
	f.Add(append(valid, "GET / HTTP/1.1\r\n"...))
	f.Add([]byte{0x01, 0x02, 0x00, 0x00})                         // HTTP/3 HEADERS
	f.Add([]byte{0xc0, 0, 0, 0, 0, 0, 0, 0x21})                   // 8-byte varint type
	f.Add(quicvarint.Append(nil, tunnel.FrameType))               // type only
	f.Add(append(quicvarint.Append(nil, tunnel.FrameType), 0xff)) // bad length
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		// A plain HTTP/3 client's stream is never a tunnel, and nothing of
		// it is consumed before the HTTP/3 server reads it.
		plain := &peekBuffer{r: bytes.NewReader(data)}
		if kind, _, err := readStreamStart(plain, false); err == nil && (kind != streamHTTP3 || plain.r.Len() != len(data)) {
			t.Fatalf("plain HTTP/3 stream taken as kind %d, %d bytes consumed", kind, len(data)-plain.r.Len())
		}
		p := &peekBuffer{r: bytes.NewReader(data)}
		kind, hdr, err := readStreamStart(p, true)
		consumed := len(data) - p.r.Len()
		if err != nil {
			return
		}
		switch kind {
		case streamHTTP3:
			if consumed != 0 {
				t.Fatalf("HTTP/3 stream: %d bytes consumed before the HTTP/3 server saw them", consumed)
			}
			n := tunnel.PrefixLen(data[0])
			if len(data) >= n && tunnel.IsTunnel(data[:n]) {
				t.Fatalf("a tunnel prefix %x was taken for HTTP/3", data[:n])
			}
		case streamTunnel:
			// At most the type, a length and the bounded payload.
			if consumed > 8+8+tunnel.MaxPayload {
				t.Fatalf("tunnel header consumed %d bytes", consumed)
			}
			if _, err := hdr.AppendTo(nil); err != nil {
				t.Fatalf("accepted a header that cannot be written back: %v (%+v)", err, hdr)
			}
		case streamControl:
			if consumed != 0 {
				t.Fatalf("control frame: %d bytes consumed before it was read", consumed)
			}
			if t0, _, err := quicvarint.Parse(data); err != nil || t0 != ControlStreamType {
				t.Fatalf("stream starting %x taken for a control frame", data)
			}
		default:
			t.Fatalf("unknown kind %d", kind)
		}
	})
}

func FuzzControlFrame(f *testing.F) {
	f.Add(finishedFrame)
	f.Add(append(finishedFrame, "trailing"...))
	f.Add(quicvarint.Append(quicvarint.Append(nil, ControlStreamType), 3))                  // length without payload
	f.Add(quicvarint.Append(quicvarint.Append(nil, ControlStreamType), 0))                  // empty payload
	f.Add(quicvarint.Append(quicvarint.Append(nil, ControlStreamType), 1<<20))              // too long
	f.Add(append(quicvarint.Append(quicvarint.Append(nil, ControlStreamType), 3), 9, 1, 2)) // a later version's payload
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		msg, err := readControlFrame(r)
		consumed := len(data) - r.Len()
		if consumed > 8+8+maxControlFrame {
			t.Fatalf("control frame consumed %d bytes", consumed)
		}
		if err != nil {
			return
		}
		// What was accepted is a whole frame: type, length, payload.
		_, n1, _ := quicvarint.Parse(data)
		l, n2, _ := quicvarint.Parse(data[n1:])
		if consumed != n1+n2+int(l) || msg != data[n1+n2] {
			t.Fatalf("frame %x: message %d after %d bytes", data, msg, consumed)
		}
	})
}
