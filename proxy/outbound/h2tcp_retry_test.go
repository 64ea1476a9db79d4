package outbound

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/h2tcp"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// h2tcpPeers is the TCP transport's pool as Peers (proxy/sidecar's
// adapter, which this package cannot import), calling picked with each
// connection it hands out.
type h2tcpPeers struct {
	pool   *h2tcp.Pool
	picked func(*h2tcp.PeerConn)
}

func (p h2tcpPeers) Get(ctx context.Context, addr string, want identity.ID) (PeerConn, error) {
	pc, err := p.pool.Get(ctx, addr, want)
	if err != nil {
		return nil, err
	}
	p.picked(pc)
	return h2tcpConn{pc}, nil
}

func (p h2tcpPeers) Unavailable(addr string, want identity.ID) bool {
	return p.pool.Unavailable(addr, want)
}

type h2tcpConn struct{ *h2tcp.PeerConn }

func (c h2tcpConn) OpenTunnel(ctx context.Context, target string) (TunnelStream, error) {
	s, err := c.PeerConn.OpenTunnel(ctx, target)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// A POST over the TCP transport whose connection stops taking new work
// between the pool handing it out and the request (the peer sent GOAWAY,
// or closed it: "client conn not usable", nothing of the body read) is
// sent again on a new connection and reaches the app exactly once; a
// POST whose body was partly sent when the connection died is not sent
// again (the app may have it) and gets a 502 naming the failure. Real
// loopback sockets and mTLS; the break happens in the pool hook, the
// partly sent body is held by a pipe.
func TestPOSTOverTCPRetriedOnlyWhenUnread(t *testing.T) {
	const serverID = "spiffe://test.local/server"
	tests := []struct {
		name string
		// breakIt runs when the first connection is picked.
		breakIt func(t *testing.T, pc *h2tcp.PeerConn, sc *h2tcp.ServerConn, hold func())
		partly  bool // the app reads part of the body, then the connection dies
		status  int
		posts   int32 // POSTs the app saw
	}{
		{name: "GOAWAY between pick and request", status: 200, posts: 1,
			breakIt: func(t *testing.T, pc *h2tcp.PeerConn, sc *h2tcp.ServerConn, hold func()) {
				hold() // a stream in flight keeps the connection open after GOAWAY
				if err := sc.GoAway(testkit.HangCtx(t)); err != nil {
					t.Fatal(err)
				}
				testkit.Eventually(t, "the GOAWAY to arrive", func() bool { return !pc.Alive() })
			}},
		{name: "closed between pick and request", status: 200, posts: 1,
			breakIt: func(t *testing.T, pc *h2tcp.PeerConn, sc *h2tcp.ServerConn, _ func()) {
				sc.Close(meshcode.ConnShutdown, "test")
				<-pc.Context().Done()
			}},
		{name: "body partly sent when the connection died", partly: true, status: http.StatusBadGateway, posts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := identitytest.NewCA(t, "test.local")
			tcp, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln, err := h2tcp.Listen(tcp, h2tcp.Config{Identity: identitytest.Provider(t, ca, serverID)}, h2tcp.ServerConfig{})
			if err != nil {
				t.Fatal(err)
			}
			var posts atomic.Int32
			partlyRead := make(chan struct{})
			release := make(chan struct{})
			app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hold" {
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					select {
					case <-release:
					case <-r.Context().Done():
					}
					return
				}
				posts.Add(1)
				if tt.partly {
					io.ReadFull(r.Body, make([]byte, 3))
					close(partlyRead)
					<-r.Context().Done()
					// Not a 200: the closing connection may still carry
					// what a returning handler writes.
					panic(http.ErrAbortHandler)
				}
				io.Copy(w, r.Body)
			})
			conns := make(chan *h2tcp.ServerConn, 4)
			ctx, cancel := context.WithCancel(context.Background())
			var served sync.WaitGroup
			served.Go(func() {
				for {
					c, err := ln.Accept(ctx)
					if err != nil {
						return
					}
					conns <- c
					served.Go(func() { c.Serve(app, func(s *h2tcp.ServerStream, _ string) { s.Reset(meshcode.Reset) }) })
				}
			})
			pool, err := h2tcp.NewPool(h2tcp.Config{Identity: identitytest.Provider(t, ca, "spiffe://test.local/client")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				close(release)
				pool.Close()
				cancel()
				ln.Close()
				served.Wait()
			})

			var picks atomic.Int32
			peers := h2tcpPeers{pool: pool, picked: func(pc *h2tcp.PeerConn) {
				if picks.Add(1) != 1 || tt.breakIt == nil {
					return
				}
				hold := func() {
					req, _ := http.NewRequest("GET", "https://web/hold", nil)
					resp, err := pc.RoundTrip(req)
					if err != nil {
						t.Fatalf("holding a stream open: %v", err)
					}
					t.Cleanup(func() { resp.Body.Close() })
				}
				tt.breakIt(t, pc, <-conns, hold)
			}}
			disc := &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": {{Addr: ln.Addr().String(), Identity: serverID}}}}
			p := New(Config{Discovery: disc, Peers: peers})

			var body io.Reader = strings.NewReader("payload")
			if tt.partly {
				pr, pw := io.Pipe()
				body = pr
				go func() {
					pw.Write([]byte("pay"))
					<-partlyRead
					(<-conns).Close(meshcode.ConnShutdown, "test") // the connection dies mid-body
				}()
				t.Cleanup(func() { pw.Close() })
			}
			req := httptest.NewRequest("POST", "http://web/", body)
			if tt.partly {
				req.ContentLength = -1
			}
			rec := httptest.NewRecorder()
			p.httpPath("web").ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("app got %d %q (%s), want %d", rec.Code, rec.Body.String(), rec.Header().Get("Quicmesh-Proxy-Error"), tt.status)
			}
			if tt.status == 200 && rec.Body.String() != "payload" {
				t.Errorf("app got body %q, want the payload", rec.Body.String())
			}
			if tt.status != 200 && !strings.Contains(rec.Body.String(), "h2tcp") {
				t.Errorf("the 502 does not say what failed: %q", rec.Body.String())
			}
			if n := posts.Load(); n != tt.posts {
				t.Errorf("the app saw the POST %d times, want %d", n, tt.posts)
			}
		})
	}
}
