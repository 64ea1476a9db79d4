package h2client

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/quicmesh/quicmesh/internal/echo"
)

func grpcFrame(msg []byte) []byte {
	b := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	copy(b[5:], msg)
	return b
}

// readMsg reads one length-prefixed gRPC message.
func readMsg(r io.Reader) ([]byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint32(h[1:]))
	_, err := io.ReadFull(r, msg)
	return msg, err
}

// TestGRPC calls grpc-go's echo server (internal/echo) through the
// client in each of the four call shapes, the request written message
// by message through a pipe and the response read message by message.
func TestGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := echo.StartGRPC(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	c := newClient(t, Config{StreamWindow: 64 << 10, MaxStreams: 4})
	big := bytes.Repeat([]byte("m"), 1<<20)

	tests := []struct {
		name     string
		method   string
		md       map[string]string
		send     [][]byte
		lockstep bool // read one response message per request message
		want     [][]byte
		status   string
	}{
		{name: "unary", method: echo.MethodEcho, send: [][]byte{[]byte("hi")}, want: [][]byte{[]byte("hi")}, status: "0"},
		{name: "unary over the windows", method: echo.MethodEcho, send: [][]byte{big}, want: [][]byte{big}, status: "0"},
		{name: "unary error status", method: echo.MethodEcho, send: [][]byte{[]byte("status:NOT_FOUND")}, status: "5"},
		{name: "server streaming", method: echo.MethodStream, md: map[string]string{echo.MDCount: "5"}, send: [][]byte{[]byte("s")},
			want: [][]byte{[]byte("s"), []byte("s"), []byte("s"), []byte("s"), []byte("s")}, status: "0"},
		{name: "client streaming", method: echo.MethodCollect, send: [][]byte{[]byte("a"), []byte("b"), []byte("c")}, want: [][]byte{[]byte("abc")}, status: "0"},
		{name: "bidi", method: echo.MethodBidi, send: [][]byte{[]byte("1"), big, []byte("3")}, lockstep: true, want: [][]byte{[]byte("1"), big, []byte("3")}, status: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			req := request(t, t.Context(), "POST", "http://"+addr+tt.method, pr)
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			for k, v := range tt.md {
				req.Header.Set(k, v)
			}
			sent := make(chan error, 1)
			if !tt.lockstep {
				go func() {
					for _, m := range tt.send {
						if _, err := pw.Write(grpcFrame(m)); err != nil {
							sent <- err
							return
						}
					}
					sent <- pw.Close()
				}()
			} else {
				// The echo server sends its headers before reading:
				// the request HEADERS must go out before any message.
				close(sent)
			}
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got [][]byte
			if tt.lockstep {
				for _, m := range tt.send {
					go pw.Write(grpcFrame(m))
					msg, err := readMsg(resp.Body)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, msg)
				}
				pw.Close()
			}
			for {
				msg, err := readMsg(resp.Body)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, msg)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d messages, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tt.want[i]) {
					t.Errorf("message %d: %d bytes, want %d", i, len(got[i]), len(tt.want[i]))
				}
			}
			st := resp.Trailer.Get("Grpc-Status")
			if st == "" {
				st = resp.Header.Get("Grpc-Status") // trailers-only response
			}
			if st != tt.status {
				t.Errorf("grpc-status %q, want %q (header %v, trailer %v)", st, tt.status, resp.Header, resp.Trailer)
			}
			if tt.status == "0" && resp.Trailer.Get(echo.MDTrailer) != "done" {
				t.Errorf("trailer %s = %q", echo.MDTrailer, resp.Trailer.Get(echo.MDTrailer))
			}
		})
	}
}
