package transport_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/tunnel"
)

// Tunnels stay on the mesh ALPN: a stream that starts with a tunnel
// header is a tunnel on a sidecar's connection, and on a plain HTTP/3
// client's (ALPN h3) an HTTP/3 request stream like any other, which the
// HTTP/3 server ends for want of a HEADERS frame; the tunnel handler
// never sees it.
func TestTunnelsStayOnTheMeshALPN(t *testing.T) {
	const serverID, clientID = "spiffe://test.local/ns/a/sa/server", "spiffe://test.local/ns/a/sa/client"
	ca := identitytest.NewCA(t, "test.local")
	ep, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, serverID), AcceptH3: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	srv := transport.NewServer(ep, transport.ServerConfig{})
	var tunnels atomic.Int64
	plain := make(chan bool, 2)
	go func() {
		for {
			c, err := srv.Accept(context.Background())
			if err != nil {
				return
			}
			plain <- c.PlainHTTP3()
			go c.Serve(http.NotFoundHandler(), func(str *transport.Stream, target string) {
				tunnels.Add(1)
				str.Close()
			})
		}
	}()
	header, err := tunnel.Header{Target: "web"}.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alpn    string
		plain   bool
		tunnels int64
	}{
		{alpn: transport.ALPN, tunnels: 1},
		{alpn: transport.ALPNH3, plain: true, tunnels: 0},
	} {
		t.Run(tc.alpn, func(t *testing.T) {
			ctx := testkit.HangCtx(t)
			before := tunnels.Load()
			tlsConf := identity.ClientConfig(identitytest.Provider(t, ca, clientID), identity.MustParseID(serverID), []string{tc.alpn})
			conn, err := quic.DialAddr(ctx, ep.Addr().String(), tlsConf, &quic.Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseWithError(0, "")
			if got := <-plain; got != tc.plain {
				t.Fatalf("PlainHTTP3() = %v, want %v", got, tc.plain)
			}
			str, err := conn.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := str.Write(header); err != nil {
				t.Fatal(err)
			}
			str.Close()
			// The server is done with the stream once it ends its side:
			// the tunnel handler's close, or the HTTP/3 server's reset.
			_, err = io.Copy(io.Discard, str)
			if se, ok := errors.AsType[*quic.StreamError](err); tc.plain && !ok {
				t.Fatalf("plain HTTP/3 stream ended with %v, want the HTTP/3 server's reset", err)
			} else if ok && !tc.plain {
				t.Fatalf("tunnel stream reset: %v", se)
			}
			if got := tunnels.Load() - before; got != tc.tunnels {
				t.Fatalf("%d tunnels served, want %d", got, tc.tunnels)
			}
		})
	}
}
