package sidecar_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// benchMesh is a client and a server sidecar in front of apps that sink
// TCP bytes, echo HTTP and echo gRPC.
type benchMesh struct {
	tcp, web, grpc string // outbound listeners
	direct         struct{ tcp, web, grpc string }
}

func newBenchMesh(b *testing.B) *benchMesh {
	b.Helper()
	mesh := meshtest.New(b)
	sink := mesh.TCPApp("sink", func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		var ack [8]byte
		for i := range ack {
			ack[i] = byte(n >> (8 * i))
		}
		c.Write(ack[:])
	})
	web := mesh.HTTPApp("web", meshtest.H1, nil)
	g := mesh.GRPCApp("grpc")
	// Every goroutine a sidecar starts inherits the label of the goroutine
	// that started it, so a CPU profile splits by sidecar:
	// go tool pprof -tagfocus side=client (or server).
	labelSide("server")
	mesh.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"sink": sink.URL("tcp"), "web": web.URL("http"), "grpc": g.URL("h2c")}})
	labelSide("client")
	client := mesh.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{
		{Service: "sink", Opaque: true}, {Service: "web"}, {Service: "grpc"},
	}})
	pprof.SetGoroutineLabels(context.Background())
	m := &benchMesh{tcp: client.Bind("sink"), web: client.Bind("web"), grpc: client.Bind("grpc")}
	m.direct.tcp, m.direct.web, m.direct.grpc = sink.Addr, web.Addr, g.Addr
	return m
}

// labelSide sets the profiler label side=name on the calling goroutine.
func labelSide(name string) {
	pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", name)))
}

// sendBulk pushes size bytes one way through addr and waits for the
// sink's byte count.
func sendBulk(b *testing.B, addr string, size int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	for left := size; left > 0; {
		n := min(left, len(buf))
		if _, err := c.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
		left -= n
	}
	c.(*net.TCPConn).CloseWrite()
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatal(err)
	}
	var n int
	for i := range ack {
		n |= int(ack[i]) << (8 * i)
	}
	if n != size {
		b.Fatalf("sink got %d bytes, want %d", n, size)
	}
}

// BenchmarkTunnelThroughput moves 64 MiB one way over one tunnelled TCP
// connection per iteration; MB/s is the single-connection throughput.
func BenchmarkTunnelThroughput(b *testing.B) {
	m := newBenchMesh(b)
	const size = 64 << 20
	for _, tc := range []struct{ name, addr string }{{"direct", m.direct.tcp}, {"mesh", m.tcp}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				sendBulk(b, tc.addr, size)
			}
		})
	}
}

// BenchmarkHTTP1 measures request latency for HTTP/1.1 GETs, direct and
// through the mesh, with 16 concurrent clients.
func BenchmarkHTTP1(b *testing.B) {
	m := newBenchMesh(b)
	for _, tc := range []struct{ name, addr string }{{"direct", m.direct.web}, {"mesh", m.web}} {
		b.Run(tc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := "http://" + tc.addr + "/"
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkGRPCUnary measures unary calls with 128-byte messages, direct
// and through the mesh, over one client connection.
func BenchmarkGRPCUnary(b *testing.B) {
	m := newBenchMesh(b)
	for _, tc := range []struct{ name, addr string }{{"direct", m.direct.grpc}, {"mesh", m.grpc}} {
		b.Run(tc.name, func(b *testing.B) {
			cc := testkit.GRPCConn(b, tc.addr)
			payload := []byte(strings.Repeat("x", 128))
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := echo.EchoUnary(context.Background(), cc, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
