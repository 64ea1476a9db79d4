package sidecar_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
)

// benchMesh is a client and a server sidecar in front of apps that sink
// TCP bytes, echo HTTP and echo gRPC.
type benchMesh struct {
	tcp, web, grpc string // outbound listeners
	direct         struct{ tcp, web, grpc string }
}

func newBenchMesh(b *testing.B) *benchMesh {
	b.Helper()
	ca := identitytest.NewCA(b, "test.local")
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				var ack [8]byte
				for i := range ack {
					ack[i] = byte(n >> (8 * i))
				}
				c.Write(ack[:])
			}()
		}
	}()
	b.Cleanup(func() { sink.Close() })
	web := echo.StartHTTP1(listenB(b))
	b.Cleanup(func() { web.Close() })
	g := echo.StartGRPC(listenB(b))
	b.Cleanup(func() { g.Close() })

	server, err := sidecar.Start(sidecar.Config{
		Identity: identitytest.Provider(b, ca, echoID), Resolver: staticNew(nil), InboundAddr: "127.0.0.1:0",
		Routes: inbound.Routes{"sink": "tcp://" + sink.Addr().String(), "web": "http://" + web.Addr().String(), "grpc": "h2c://" + g.Addr().String()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { server.Close() })
	ep := []discovery.Endpoint{{Addr: server.InboundAddr().String(), Identity: echoID}}
	client, err := sidecar.Start(sidecar.Config{
		Identity: identitytest.Provider(b, ca, clientID), Resolver: staticNew(map[string][]discovery.Endpoint{"sink": ep, "web": ep, "grpc": ep}),
		InboundAddr: "127.0.0.1:0",
		Binds: []sidecar.Bind{
			{Listen: "127.0.0.1:0", Service: "sink", Opaque: true},
			{Listen: "127.0.0.1:0", Service: "web"},
			{Listen: "127.0.0.1:0", Service: "grpc"},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	m := &benchMesh{tcp: client.BindAddr(0).String(), web: client.BindAddr(1).String(), grpc: client.BindAddr(2).String()}
	m.direct.tcp, m.direct.web, m.direct.grpc = sink.Addr().String(), web.Addr().String(), g.Addr().String()
	return m
}

func listenB(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return ln
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
			cc, err := grpc.NewClient(tc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
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
