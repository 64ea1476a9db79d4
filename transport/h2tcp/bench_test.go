package h2tcp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// BenchmarkTunnelDownload moves 64 MiB per iteration from the accepting
// side to the dialling side over one tunnel on loopback: the direction
// the dialling side's stream receive window governs. MB/s is one
// tunnel's throughput.
func BenchmarkTunnelDownload(b *testing.B) {
	const size = 64 << 20
	p := newPair(b, http.NotFoundHandler())
	pc, err := p.pool.Get(testkit.HangCtx(b), p.ln.Addr().String(), p.want)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(size)
	for b.Loop() {
		str, err := pc.OpenTunnel(testkit.HangCtx(b), "sink")
		if err != nil {
			b.Fatal(err)
		}
		call := <-p.tunnel
		go func() {
			defer close(call.done)
			for left := size; left > 0; left -= len(buf) {
				if _, err := call.str.Write(buf[:min(left, len(buf))]); err != nil {
					return
				}
			}
			call.str.CloseWrite()
		}()
		n, err := io.Copy(io.Discard, str)
		if err != nil || n != size {
			b.Fatalf("read %d bytes (%v), want %d", n, err, size)
		}
		str.CloseWrite()
	}
}

// BenchmarkPost1KiB: one 1 KiB POST echoed per op, one connection.
func BenchmarkPost1KiB(b *testing.B) {
	p := newPair(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) }))
	pc, err := p.pool.Get(context.Background(), p.ln.Addr().String(), p.want)
	if err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 1<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		req, _ := http.NewRequest("POST", "https://web/", bytes.NewReader(payload))
		resp, err := pc.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
