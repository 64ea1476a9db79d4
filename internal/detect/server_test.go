package detect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

func TestDetectServer(t *testing.T) {
	long := strings.Repeat("A", DefaultMaxBytes+10)
	tests := []struct {
		name  string
		input string
		// stall: the client stops sending after input (a read deadline
		// fires) instead of closing its side.
		stall bool
		want  Protocol
		err   error
		// decidedAt is how many bytes must have been consumed, fed one
		// byte per read, when the decision is taken; 0 means all.
		decidedAt int
	}{
		{"strict request line", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, HTTP1, nil, len("GET ")},
		{"h2 preface", preface + "\x00\x00\x00\x04", false, HTTP2, nil, len(preface)},
		// What the client-side detector calls opaque but lenient app
		// parsers accept: all must reach the inbound HTTP server.
		{"HTTP/1.2", "GET / HTTP/1.2\r\n", false, HTTP1, nil, len("GET ")},
		{"double space", "GET  / HTTP/1.1\r\n", false, HTTP1, nil, len("GET ")},
		{"lowercase version", "GET / http/1.1\r\n", false, HTTP1, nil, len("GET ")},
		{"leading CRLF", "\r\nGET / HTTP/1.1\r\n", false, HTTP1, nil, len("\r\nGET ")},
		{"leading space", " GET / HTTP/1.1\r\n", false, HTTP1, nil, len(" GET ")},
		{"tab separator", "GET\t/ HTTP/1.1\r\n", false, HTTP1, nil, len("GET\t")},
		{"CR as separator", "GET\r/ HTTP/1.1\r\n", false, HTTP1, nil, len("GET\r/")},
		{"unit separator", "GET\x1f/ HTTP/1.1\r\n", false, HTTP1, nil, len("GET\x1f")},
		{"NBSP", "GET\xa0/ HTTP/1.1\r\n", false, HTTP1, nil, len("GET\xa0")},
		{"HTTP/0.9 shape", "get foo\r\n", false, HTTP1, nil, len("get ")},
		{"non-token method byte", "GE/T / HTTP/1.1\r\n", false, HTTP1, nil, len("GE/T ")},
		{"preface cut short", preface[:16], false, HTTP1, nil, 0},
		{"preface diverges after its request line", preface[:18] + "XX", false, HTTP1, nil, 19},
		{"PRI as HTTP/1.1 method", "PRI * HTTP/1.1\r\n", false, HTTP1, nil, len("PRI * HTTP/1")},
		{"first word longer than MaxBytes", long, false, HTTP1, nil, DefaultMaxBytes},

		{"tls client hello", string(tlsClientHello), false, Opaque, nil, 1},
		{"postgres", "\x00\x00\x00\x08\x04\xd2\x16\x2f", false, Opaque, nil, 1},
		{"redis inline", "PING\r\n", false, Opaque, nil, len("PING\r\n")},
		{"redis RESP", "*1\r\n$4\r\nPING\r\n", false, Opaque, nil, len("*1\r\n")},
		{"ssh banner", "SSH-2.0-OpenSSH_9.6\r\n", false, Opaque, nil, len("SSH-2.0-OpenSSH_9.6\r\n")},
		{"bare LF after a word", "QUIT\n", false, Opaque, nil, len("QUIT\n")},
		{"NUL after a word", "A\x00 / HTTP/1.1\r\n", false, Opaque, nil, 2},
		{"binary", "\xff\xfe", false, Opaque, nil, 1},
		{"one word then EOF", "PING", false, Opaque, nil, 0},
		{"nothing then EOF", "", false, Opaque, nil, 0},

		{"silence", "", true, Opaque, ErrNoDecision, 0},
		{"first byte then silence", "G", true, Opaque, ErrNoDecision, 0},
		{"word then silence", "GET", true, Opaque, ErrNoDecision, 0},
		{"leading CRLF then silence", "\r\n", true, Opaque, ErrNoDecision, 0},
	}
	for _, tt := range tests {
		for _, chunks := range [][]int{nil, {1}, {2, 0, 3}} {
			t.Run(fmt.Sprintf("%s/chunks=%v", tt.name, chunks), func(t *testing.T) {
				fc := newChunkConn([]byte(tt.input), chunks...)
				if tt.stall {
					fc.endErr = os.ErrDeadlineExceeded
				}
				got, conn, err := DetectServer(fc, Config{})
				if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				if got != tt.want {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
				if len(chunks) == 1 && chunks[0] == 1 {
					want := tt.decidedAt
					if want == 0 {
						want = min(len(tt.input), DefaultMaxBytes)
					}
					if c := fc.consumed(); c != want {
						t.Errorf("consumed %d bytes before deciding, want %d", c, want)
					}
				}
				checkDeadlines(t, fc)
				fc.mu.Lock()
				fc.chunks, fc.endErr = nil, nil
				fc.mu.Unlock()
				replay, err := io.ReadAll(conn)
				if err != nil || string(replay) != tt.input {
					t.Fatalf("replay = %q (%v), want %q", replay, err, tt.input)
				}
			})
		}
	}
}

// serverReference states DetectServer's rules non-incrementally, for the
// fuzzer. eof says the input ends with the client closing its side.
func serverReference(data []byte, maxBytes int) Protocol {
	d := data[:min(len(data), maxBytes)]
	if bytes.HasPrefix(d, []byte(preface)) {
		return HTTP2
	}
	undecided := func() Protocol {
		if len(data) >= maxBytes {
			return HTTP1 // MaxBytes read without a decision
		}
		return Opaque // EOF without a decision
	}
	i := 0
	for i < len(d) && (isLenientSpace(d[i]) || d[i] == '\r' || d[i] == '\n') {
		i++
	}
	if i == len(d) {
		return undecided()
	}
	if !isTchar(d[i]) {
		return Opaque
	}
	j := i + 1
	for j < len(d) && d[j] > ' ' && d[j] < 0x7f {
		j++
	}
	if j == len(d) {
		return undecided()
	}
	switch c := d[j]; {
	case isLenientSpace(c):
		return HTTP1
	case c == '\r':
		if j+1 == len(d) {
			return undecided()
		}
		if d[j+1] == '\n' {
			return Opaque
		}
		return HTTP1
	}
	return Opaque
}

func FuzzDetectServer(f *testing.F) {
	seeds := []string{
		"", "GET / HTTP/1.1\r\n\r\n", preface, preface[:16], "PING\r\n", "*1\r\n",
		"\r\n GET\x1f/", "GET\r/", "GET\r\n", string(tlsClientHello), "A\x00",
	}
	for i, s := range seeds {
		f.Add([]byte(s), []byte{byte(i), 1, 0, 3})
	}
	f.Fuzz(func(t *testing.T, data, chunking []byte) {
		data, chunking, chunks := shapeFuzzInput(data, chunking)
		for _, maxBytes := range []int{bigLimit, 1 + int(len(chunking)%40)} {
			want := serverReference(data, maxBytes)
			for _, ch := range [][]int{nil, {1}, chunks} {
				fc := newChunkConn(data, ch...)
				got, conn, err := DetectServer(fc, Config{MaxBytes: maxBytes})
				if err != nil {
					t.Fatalf("DetectServer: %v", err)
				}
				if got != want {
					t.Fatalf("DetectServer(%q, max=%d, chunks=%v) = %v, reference says %v", data, maxBytes, ch, got, want)
				}
				if c := fc.consumed(); c > maxBytes {
					t.Fatalf("consumed %d bytes, more than MaxBytes %d", c, maxBytes)
				}
				fc.mu.Lock()
				fc.chunks = nil
				fc.mu.Unlock()
				replay, err := io.ReadAll(conn)
				if err != nil || !bytes.Equal(replay, data) {
					t.Fatalf("replay = %q (%v), want %q", replay, err, data)
				}
			}
		}
	})
}
