package detect

import (
	"bytes"
	"io"
	"testing"
)

// reference is a deliberately naive, non-incremental statement of the
// detection rules, used as an oracle for the incremental classifier.
func reference(data []byte, maxBytes int) Protocol {
	if len(data) > maxBytes {
		data = data[:maxBytes]
	}
	if bytes.HasPrefix(data, []byte(preface)) {
		return HTTP2
	}
	line, _, found := bytes.Cut(data, []byte("\n"))
	if !found {
		return Opaque
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	parts := bytes.Split(line, []byte(" "))
	if len(parts) != 3 {
		return Opaque
	}
	method, target, version := parts[0], parts[1], parts[2]
	if len(method) == 0 || len(target) == 0 {
		return Opaque
	}
	for _, c := range method {
		if !isTchar(c) {
			return Opaque
		}
	}
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return Opaque
		}
	}
	if string(version) != "HTTP/1.0" && string(version) != "HTTP/1.1" {
		return Opaque
	}
	return HTTP1
}

// bigLimit is the larger MaxBytes the fuzz targets try; the smaller one is
// 1..40 bytes, so the cut-off is exercised by short inputs too.
const bigLimit = 256

// shapeFuzzInput caps a fuzz input and turns chunking into read sizes (0
// means one empty read). Anything past MaxBytes is only replayed, never
// classified; capping the size keeps one-byte-chunk runs (and
// minimisation) fast.
func shapeFuzzInput(data, chunking []byte) ([]byte, []byte, []int) {
	if len(data) > bigLimit+64 {
		data = data[:bigLimit+64]
	}
	if len(chunking) > 64 {
		chunking = chunking[:64]
	}
	chunks := make([]int, len(chunking))
	for i, c := range chunking {
		chunks[i] = int(c % 17)
	}
	return data, chunking, chunks
}

func FuzzDetect(f *testing.F) {
	seeds := []string{
		"",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.0\n",
		"CONNECT a:443 HTTP/1.1\r\n\r\n",
		preface,
		preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00",
		preface[:10],
		"PRI * HTTP/1.1\r\n",
		string(tlsClientHello),
		"PING\r\n",
		"GET / HTTP/1.1\r\r\n",
		"GET /\xc3\xa9 HTTP/1.1\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), []byte{byte(i), 1, 0, 3})
	}
	f.Fuzz(func(t *testing.T, data, chunking []byte) {
		// The 4096-byte default limit itself is covered by
		// TestDetectMaxBytes.
		data, chunking, chunks := shapeFuzzInput(data, chunking)
		// A small limit as well as the default one, so the MaxBytes
		// cut-off is exercised by short inputs too.
		for _, maxBytes := range []int{bigLimit, 1 + int(len(chunking)%40)} {
			want := reference(data, maxBytes)
			var first Protocol
			for i, ch := range [][]int{nil, {1}, chunks} {
				fc := newChunkConn(data, ch...)
				got, conn, err := Detect(fc, Config{MaxBytes: maxBytes})
				if err != nil {
					t.Fatalf("Detect: %v", err)
				}
				if i == 0 {
					first = got
				} else if got != first {
					t.Fatalf("decision depends on chunking %v: %v vs %v", ch, got, first)
				}
				if got != want {
					t.Fatalf("Detect(%q, max=%d) = %v, reference says %v", data, maxBytes, got, want)
				}
				if c := fc.consumed(); c > maxBytes {
					t.Fatalf("consumed %d bytes, more than MaxBytes %d", c, maxBytes)
				}
				fc.mu.Lock()
				fc.chunks = nil // replay the rest in one go
				fc.mu.Unlock()
				replay, err := io.ReadAll(conn)
				if err != nil {
					t.Fatalf("reading replay: %v", err)
				}
				if !bytes.Equal(replay, data) {
					t.Fatalf("replay = %q, want %q", replay, data)
				}
			}
		}
	})
}
