package splice

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"

	"github.com/quicmesh/quicmesh/transport/meshcode"
)

func TestCopyBufAdapt(t *testing.T) {
	tests := []struct {
		name  string
		reads []int // bytes returned by successive reads
		bulk  []bool
	}{
		{"small reads stay small", []int{1, 100, smallBufSize - 1}, []bool{false, false, false}},
		{"a full small read goes bulk", []int{smallBufSize}, []bool{true}},
		{"bulk stays bulk while reads exceed small", []int{smallBufSize, bulkBufSize, smallBufSize, smallBufSize + 1}, []bool{true, true, true, true}},
		{"a read that fits small goes back", []int{smallBufSize, bulkBufSize, smallBufSize - 1}, []bool{true, true, false}},
		{"and up again", []int{smallBufSize, 10, smallBufSize}, []bool{true, false, true}},
		{"zero-byte read in bulk goes back", []int{smallBufSize, 0}, []bool{true, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newCopyBuf()
			defer b.release()
			if b.bulk || len(b.bytes()) != smallBufSize {
				t.Fatalf("new buffer: bulk=%v len=%d, want small", b.bulk, len(b.bytes()))
			}
			for i, n := range tt.reads {
				b.adapt(n)
				want := smallBufSize
				if tt.bulk[i] {
					want = bulkBufSize
				}
				if b.bulk != tt.bulk[i] || len(b.bytes()) != want {
					t.Fatalf("after read %d of %d bytes: bulk=%v len=%d, want bulk=%v len=%d",
						i, n, b.bulk, len(b.bytes()), tt.bulk[i], want)
				}
			}
		})
	}
}

// tcpAsStream is a TCP connection standing in for a tunnel stream.
type tcpAsStream struct{ *net.TCPConn }

func (s tcpAsStream) Reset(meshcode.Code) { Reset(s.TCPConn) }

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
		}
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		c.Close()
		t.FailNow()
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// splicePair runs Run between app (the app's end is returned as appSide)
// and a stream (whose far end is returned as peerSide).
func splicePair(t testing.TB) (appSide, peerSide *net.TCPConn, done <-chan Result) {
	appSide, conn := tcpPair(t)
	str, peerSide := tcpPair(t)
	t.Cleanup(func() { str.Close() })
	ch := make(chan Result, 1)
	go func() { ch <- Run(conn, tcpAsStream{str}) }()
	return appSide, peerSide, ch
}

// TestRunBulkBothWays moves bulk data both ways at once (so both copy
// loops switch to their large buffers and back for the tail) and checks
// every byte arrives in order and is counted.
func TestRunBulkBothWays(t *testing.T) {
	for _, size := range []int{0, 1, smallBufSize, smallBufSize + 1, 3*bulkBufSize + 17} {
		up, down := make([]byte, size), make([]byte, size/2+5)
		rand.Read(up)
		rand.Read(down)
		app, peer, done := splicePair(t)
		got := make(chan [32]byte, 2)
		recv := func(c *net.TCPConn) {
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				t.Error(err)
			}
			got <- [32]byte(h.Sum(nil))
		}
		go recv(peer)
		go recv(app)
		send := func(c *net.TCPConn, b []byte) {
			if _, err := io.Copy(c, bytes.NewReader(b)); err != nil {
				t.Error(err)
			}
			c.CloseWrite()
		}
		go send(app, up)
		go send(peer, down)
		h1, h2 := <-got, <-got
		res := <-done
		app.Close()
		peer.Close()
		if res.Err != nil {
			t.Fatalf("size %d: splice error %v", size, res.Err)
		}
		if res.Sent != int64(len(up)) || res.Received != int64(len(down)) {
			t.Fatalf("size %d: sent %d received %d, want %d and %d", size, res.Sent, res.Received, len(up), len(down))
		}
		wantUp, wantDown := sha256.Sum256(up), sha256.Sum256(down)
		if !(h1 == wantUp && h2 == wantDown || h1 == wantDown && h2 == wantUp) {
			t.Fatalf("size %d: data corrupted in transit", size)
		}
	}
}

// BenchmarkRunBulk: one direction of bulk data through a splice between
// loopback TCP connections (the copy loop's own cost and allocations;
// the QUIC stream's is in the tunnel benchmarks).
func BenchmarkRunBulk(b *testing.B) {
	const chunk = 1 << 20
	data := make([]byte, chunk)
	app, peer, done := splicePair(b)
	drained := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, peer); drained <- err }()
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := app.Write(data); err != nil {
			b.Fatal(err)
		}
	}
	app.CloseWrite()
	if err := <-drained; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	peer.CloseWrite()
	<-done
	app.Close()
	peer.Close()
}
