package h2tcp

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

func TestFrameReader(t *testing.T) {
	var b []byte
	b = append(appendFrameHeader(b, frameData, 3), "abc"...)
	b = append(appendFrameHeader(b, frameData, 2), "de"...)
	b = appendFrameHeader(b, frameFIN, 0)
	got, err := io.ReadAll(newFrameReader(bytes.NewReader(b)))
	if err != nil || string(got) != "abcde" {
		t.Fatalf("read %q, %v", got, err)
	}

	b = append(appendFrameHeader(nil, frameData, 1), 'x')
	b = appendFrameHeader(b, frameReset, uint64(meshcode.ConnectFailed))
	got, err = io.ReadAll(newFrameReader(bytes.NewReader(b)))
	if se, ok := errors.AsType[*meshcode.StreamError](err); !ok || se.Code != meshcode.ConnectFailed || !se.Remote || string(got) != "x" {
		t.Fatalf("read %q, %v; want x then a remote ConnectFailed", got, err)
	}

	for name, in := range map[string][]byte{
		"no FIN":         append(appendFrameHeader(nil, frameData, 1), 'x'),
		"cut DATA":       append(appendFrameHeader(nil, frameData, 5), 'x'),
		"empty DATA":     appendFrameHeader(nil, frameData, 0),
		"oversized DATA": appendFrameHeader(nil, frameData, maxFrameData+1),
		"unknown type":   {0x7f},
		"huge code":      appendFrameHeader(nil, frameReset, 1<<40),
	} {
		_, err := io.ReadAll(newFrameReader(bytes.NewReader(in)))
		if err == nil || err == io.EOF {
			t.Errorf("%s: got %v, want an error", name, err)
		}
	}
}

// FuzzFrameReader: any body decodes to at most its own bytes of payload
// and ends in io.EOF only after a FIN frame; it never panics or loops.
func FuzzFrameReader(f *testing.F) {
	f.Add(append(append(appendFrameHeader(nil, frameData, 3), "abc"...), frameFIN))
	f.Add(appendFrameHeader(nil, frameReset, 0x51c2))
	f.Add([]byte{frameData, 0x80})
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := io.ReadAll(newFrameReader(bytes.NewReader(in)))
		if len(got) > len(in) {
			t.Fatalf("decoded %d bytes from %d", len(got), len(in))
		}
		if err == nil && !bytes.Contains(in, []byte{frameFIN}) {
			t.Fatalf("clean end without a FIN frame in %x", in)
		}
	})
}
