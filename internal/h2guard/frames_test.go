package h2guard

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
)

// wire builds an HTTP/2 byte stream with the framer: what a client (with
// preface) or a server would send.
func wire(t testing.TB, preface bool, write func(fr *http2.Framer)) []byte {
	var b bytes.Buffer
	if preface {
		b.WriteString(ClientPreface)
	}
	fr := http2.NewFramer(&b, nil)
	fr.AllowIllegalWrites = true
	write(fr)
	return b.Bytes()
}

func collect(s *splitter, chunks [][]byte) []Frame {
	var got []Frame
	for _, c := range chunks {
		s.feed(c, func(f Frame) { got = append(got, f) })
	}
	return got
}

// chunk cuts b into pieces of n bytes.
func chunk(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

func TestSplitter(t *testing.T) {
	stream := wire(t, true, func(fr *http2.Framer) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte("abc"), EndStream: true, EndHeaders: true})
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WriteData(3, false, bytes.Repeat([]byte("x"), 20000))
		fr.WriteWindowUpdate(3, 0)
		fr.WriteRSTStream(3, http2.ErrCodeProtocol)
		fr.WriteGoAway(3, http2.ErrCodeEnhanceYourCalm, nil)
	})
	want := []struct {
		typ    http2.FrameType
		stream uint32
		length uint32
		code   uint32 // for RST_STREAM
	}{
		{http2.FrameSettings, 0, 6, 0},
		{http2.FrameHeaders, 1, 3, 0},
		{http2.FrameRSTStream, 1, 4, uint32(http2.ErrCodeCancel)},
		{http2.FrameData, 3, 20000, 0},
		{http2.FrameWindowUpdate, 3, 4, 0},
		{http2.FrameRSTStream, 3, 4, uint32(http2.ErrCodeProtocol)},
		{http2.FrameGoAway, 0, 8, 0},
	}
	for _, size := range []int{1, 2, 5, 9, 10, 24, 25, 100, 16384, len(stream)} {
		s := newSplitter(true)
		got := collect(&s, chunk(stream, size))
		if len(got) != len(want) {
			t.Fatalf("pieces of %d: %d frames, want %d", size, len(got), len(want))
		}
		for i, w := range want {
			g := got[i]
			if http2.FrameType(g.Type) != w.typ || g.StreamID != w.stream || g.Length != w.length {
				t.Errorf("pieces of %d, frame %d: %v stream %d length %d; want %v stream %d length %d", size, i, http2.FrameType(g.Type), g.StreamID, g.Length, w.typ, w.stream, w.length)
			}
			if w.typ == http2.FrameRSTStream && g.ErrorCode() != w.code {
				t.Errorf("pieces of %d, frame %d: error code %d, want %d", size, i, g.ErrorCode(), w.code)
			}
		}
		if !s.atBoundary() || s.frames != uint64(len(want)) {
			t.Errorf("pieces of %d: at boundary %v after %d frames", size, s.atBoundary(), s.frames)
		}
	}
}

func TestSplitterBoundary(t *testing.T) {
	f := wire(t, false, func(fr *http2.Framer) { fr.WriteRSTStream(1, http2.ErrCodeCancel) })
	for i, tc := range []struct {
		name string
		feed []byte
		want bool
	}{
		{"nothing yet", nil, true},
		{"half a header", f[:4], false},
		{"header only", f[:9], false},
		{"part of the payload", f[:11], false},
		{"whole frame", f, true},
	} {
		s := newSplitter(false)
		s.feed(tc.feed, nil)
		if got := s.atBoundary(); got != tc.want {
			t.Errorf("%d %s: atBoundary %v, want %v", i, tc.name, got, tc.want)
		}
	}
	s := newSplitter(true)
	s.feed([]byte(ClientPreface[:10]), nil)
	if s.atBoundary() {
		t.Error("inside the preface: at a boundary")
	}
}

func TestGoAwayFrame(t *testing.T) {
	fr := http2.NewFramer(nil, bytes.NewReader(goAwayFrame(7, codeEnhanceYourCal)))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	ga, ok := f.(*http2.GoAwayFrame)
	if !ok || ga.LastStreamID != 7 || ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("got %v", f)
	}
}

// FuzzSplitter feeds arbitrary bytes, whole and in two pieces: the
// splitter must never panic, must report the same frames however the
// stream is cut, and can report at most one frame per 9 bytes.
func FuzzSplitter(f *testing.F) {
	f.Add(wire(f, true, func(fr *http2.Framer) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte("abc"), EndHeaders: true})
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
	}), uint16(30), true)
	f.Add([]byte("\x00\x00\x00\x03\x00\x00\x00\x00\x01"), uint16(4), false)
	f.Add(bytes.Repeat([]byte{0xff}, 64), uint16(9), false)
	f.Fuzz(func(t *testing.T, b []byte, cut uint16, preface bool) {
		whole := newSplitter(preface)
		one := collect(&whole, [][]byte{b})
		at := int(cut) % (len(b) + 1)
		split := newSplitter(preface)
		two := collect(&split, [][]byte{b[:at], b[at:]})
		if len(one) != len(two) {
			t.Fatalf("%d frames whole, %d when cut at %d", len(one), len(two), at)
		}
		for i := range one {
			if one[i] != two[i] {
				t.Fatalf("frame %d: %+v whole, %+v when cut", i, one[i], two[i])
			}
		}
		if len(one) > len(b)/frameHeaderLen {
			t.Fatalf("%d frames from %d bytes", len(one), len(b))
		}
		if whole.frames != uint64(len(one)) || whole.atBoundary() != split.atBoundary() {
			t.Fatalf("state differs: %+v vs %+v", whole, split)
		}
	})
}
