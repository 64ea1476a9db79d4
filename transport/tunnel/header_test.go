package tunnel

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"
)

func TestRoundTrip(t *testing.T) {
	tests := []Header{
		{Target: "echo"},
		{Target: "echo.default.svc:8080"},
		{Target: "a_b-c", Extensions: []Extension{{Kind: 1, Value: []byte("x")}, {Kind: 7, Value: nil}}},
		{Target: strings.Repeat("a", MaxTargetLen)},
	}
	for _, h := range tests {
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%q): %v", h.Target, err)
		}
		if !IsTunnel(b[:PrefixLen(b[0])]) {
			t.Fatalf("IsTunnel(%x) = false", b[:4])
		}
		trailer := []byte("app bytes")
		r := bytes.NewReader(append(b, trailer...))
		got, err := Read(r)
		if err != nil {
			t.Fatalf("Read(%q): %v", h.Target, err)
		}
		if got.Target != h.Target || len(got.Extensions) != len(h.Extensions) {
			t.Fatalf("Read = %+v, want %+v", got, h)
		}
		for i := range h.Extensions {
			if got.Extensions[i].Kind != h.Extensions[i].Kind || !bytes.Equal(got.Extensions[i].Value, h.Extensions[i].Value) {
				t.Fatalf("extension %d = %+v, want %+v", i, got.Extensions[i], h.Extensions[i])
			}
		}
		rest, _ := io.ReadAll(r)
		if !bytes.Equal(rest, trailer) {
			t.Fatalf("Read consumed app bytes: rest = %q", rest)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		h    Header
		want string
	}{
		{"empty", Header{}, "empty target"},
		{"long", Header{Target: strings.Repeat("a", MaxTargetLen+1)}, "longer than"},
		{"space", Header{Target: "a b"}, "invalid byte"},
		{"port zero", Header{Target: "a:0"}, "out of range"},
		{"port big", Header{Target: "a:65536"}, "out of range"},
		{"two colons", Header{Target: "a:1:2"}, "invalid"},
		{"no name", Header{Target: ":80"}, "no name"},
		{"huge ext", Header{Target: "a", Extensions: []Extension{{Kind: 1, Value: make([]byte, MaxPayload)}}}, "exceeds"},
		{"ext kind", Header{Target: "a", Extensions: []Extension{{Kind: 1 << 20}}}, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.h.AppendTo(nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestReadRejects(t *testing.T) {
	frame := func(payload []byte) []byte {
		b := quicvarint.Append(nil, FrameType)
		b = quicvarint.Append(b, uint64(len(payload)))
		return append(b, payload...)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "reading type"},
		{"http3 headers", []byte{0x01, 0x02, 0x00, 0x00}, "not a tunnel"},
		{"truncated length", quicvarint.Append(nil, FrameType), "reading length"},
		{"too long", append(quicvarint.Append(nil, FrameType), quicvarint.Append(nil, MaxPayload+1)...), "exceeds"},
		{"truncated payload", append(quicvarint.Append(nil, FrameType), 5, 1), "unexpected EOF"},
		{"empty payload", frame(nil), "empty payload"},
		{"version", frame([]byte{2, 0, 1, 'a'}), "unsupported version"},
		{"flags", frame([]byte{1, 1, 1, 'a'}), "unknown flags"},
		{"target overrun", frame([]byte{1, 0, 9, 'a'}), "exceeds payload"},
		{"bad target", frame([]byte{1, 0, 1, '/'}), "invalid byte"},
		{"ext overrun", frame([]byte{1, 0, 1, 'a', 1, 5, 'x'}), "extension 1 length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrMalformed containing %q", err, tt.want)
			}
		})
	}
}

func TestIsTunnel(t *testing.T) {
	if IsTunnel([]byte{0x01}) {
		t.Fatal("HEADERS frame detected as tunnel")
	}
	if IsTunnel(nil) {
		t.Fatal("empty prefix detected as tunnel")
	}
	b := quicvarint.Append(nil, FrameType)
	if PrefixLen(b[0]) != len(b) {
		t.Fatalf("PrefixLen = %d, want %d", PrefixLen(b[0]), len(b))
	}
}

func FuzzRead(f *testing.F) {
	good, _ := Header{Target: "echo:80", Extensions: []Extension{{Kind: 3, Value: []byte("v")}}}.AppendTo(nil)
	f.Add(good)
	f.Add([]byte{0x01, 0x00})
	f.Add(append(quicvarint.Append(nil, FrameType), 0x44, 0x00))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := Read(bytes.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// Whatever decodes must re-encode to a header that decodes the same.
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatalf("decoded header does not re-encode: %v", err)
		}
		h2, err := Read(bytes.NewReader(b))
		if err != nil || h2.Target != h.Target || len(h2.Extensions) != len(h.Extensions) {
			t.Fatalf("re-decode mismatch: %+v vs %+v (%v)", h2, h, err)
		}
	})
}

func TestDestPort(t *testing.T) {
	h := Header{Target: "orders.shop", Extensions: []Extension{{Kind: 9, Value: []byte("keep")}}}
	if _, ok := h.DestPort(); ok {
		t.Fatal("DestPort on a header without the extension: ok")
	}
	h = h.WithDestPort(8081).WithDestPort(9090)
	b, err := h.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Read(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := got.DestPort(); !ok || p != 9090 {
		t.Fatalf("DestPort = %d, %v; want 9090, true", p, ok)
	}
	if len(got.Extensions) != 2 || got.Extensions[0].Kind != 9 {
		t.Fatalf("extensions %+v: want the unknown one kept and one port", got.Extensions)
	}
	if _, ok := got.WithDestPort(0).DestPort(); ok {
		t.Fatal("WithDestPort(0) kept a port")
	}
	for _, bad := range [][]byte{nil, {1}, {0, 0}, {1, 2, 3}} {
		h := Header{Target: "x", Extensions: []Extension{{Kind: ExtDestPort, Value: bad}}}
		if p, ok := h.DestPort(); ok {
			t.Fatalf("DestPort with value %x = %d, true; want not ok", bad, p)
		}
	}
}
