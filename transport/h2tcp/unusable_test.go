package h2tcp

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// spyBody is a request body that counts its reads and closes.
type spyBody struct {
	io.Reader
	reads, closes atomic.Int32
}

func (b *spyBody) Read(p []byte) (int, error) { b.reads.Add(1); return b.Reader.Read(p) }
func (b *spyBody) Close() error               { b.closes.Add(1); return nil }

// holdServer serves "/hold" with a response header, then holds the
// stream open until the client resets it or the test ends; other paths
// count POSTs and echo their body.
type holdServer struct {
	release chan struct{}
	posts   atomic.Int32
}

// newHoldPair is newPair serving a holdServer, whose held streams end
// before the listener closes.
func newHoldPair(t *testing.T, lim transport.Limits) (*pair, *holdServer) {
	s := &holdServer{release: make(chan struct{})}
	p := newPairLimits(t, s, lim)
	t.Cleanup(func() { close(s.release) })
	return p, s
}

func (s *holdServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/hold" {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-s.release:
		case <-r.Context().Done(): // the client closed the response
		}
		return
	}
	if r.Method == http.MethodPost {
		s.posts.Add(1)
	}
	io.Copy(w, r.Body)
}

func hold(t *testing.T, pc *PeerConn) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://web/hold", nil)
	resp, err := pc.RoundTrip(req)
	if err != nil {
		t.Fatalf("holding a stream open: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
}

// A connection that stops taking new work between the pool handing it
// out and the request (the server sent GOAWAY, or closed it) fails the
// request unprocessed without reading any of its body: x/net/http2's
// "client conn not usable", which the outbound side may therefore send
// again even with a body (proxy/outbound TestRetryUnreadBody). The
// connection leaves the pool at once, and the peer's drain is recorded,
// so the retry gets a new connection and the balancer prefers other
// endpoints meanwhile.
func TestUnusableConnLeavesPool(t *testing.T) {
	tests := []struct {
		name     string
		breakIt  func(t *testing.T, pc *PeerConn, sc *ServerConn)
		draining bool // the drain is recorded by the request's failure
	}{
		{name: "GOAWAY received", draining: true, breakIt: func(t *testing.T, pc *PeerConn, sc *ServerConn) {
			hold(t, pc) // the connection stays open after GOAWAY
			if err := sc.GoAway(testkit.HangCtx(t)); err != nil {
				t.Fatal(err)
			}
			testkit.Eventually(t, "the GOAWAY to arrive", func() bool { return pc.goneAway() })
		}},
		{name: "closed by the server", breakIt: func(t *testing.T, pc *PeerConn, sc *ServerConn) {
			sc.Close(meshcode.ConnShutdown, "test")
			<-pc.Context().Done()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := newHoldPair(t, transport.Limits{})
			addr := p.ln.Addr().String()
			pc := p.get(t)
			sc := <-p.conns
			// A first request: the connection is established (x/net
			// reports a connection closed before any stream otherwise).
			req, _ := http.NewRequest("GET", "https://web/", nil)
			if _, err := pc.RoundTrip(req); err != nil {
				t.Fatal(err)
			}
			tt.breakIt(t, pc, sc)

			body := &spyBody{Reader: strings.NewReader("payload")}
			req, _ = http.NewRequest("POST", "https://web/", body)
			_, err := pc.RoundTrip(req)
			if err == nil || !errors.Is(err, meshcode.ErrNotProcessed) {
				t.Fatalf("POST on the connection: %v, want it marked not processed", err)
			}
			if n := body.reads.Load(); n != 0 {
				t.Fatalf("the body was read %d times by a request that failed unprocessed", n)
			}
			if tt.draining {
				p.pool.mu.Lock()
				pooled := p.pool.peers[peerKey{addr, p.want}].conn
				p.pool.mu.Unlock()
				if pooled == pc {
					t.Error("the connection stayed pooled after failing a request as unusable")
				}
				if !p.pool.Unavailable(addr, p.want) {
					t.Error("the peer that sent GOAWAY is not reported Unavailable")
				}
			}
			if pc.Alive() {
				t.Error("a connection that refused a request as unusable is Alive")
			}
			pc2 := p.get(t)
			if pc2 == pc {
				t.Fatal("the pool handed out the connection that refused the request")
			}
			req, _ = http.NewRequest("POST", "https://web/", strings.NewReader("payload"))
			resp, err := pc2.RoundTrip(req)
			if err != nil {
				t.Fatalf("POST on the new connection: %v", err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(got) != "payload" || srv.posts.Load() != 1 {
				t.Fatalf("got %q, the server saw %d POSTs; want the payload, once", got, srv.posts.Load())
			}
		})
	}
}

// A request beyond the peer's SETTINGS_MAX_CONCURRENT_STREAMS waits for a
// stream, as over QUIC. x/net/http2 used to fail it at once as "client
// conn not usable" (marked not processed) while the connection stayed
// Alive, so the pool handed the full connection to the retry too.
func TestRequestBeyondStreamLimitWaits(t *testing.T) {
	p, srv := newHoldPair(t, transport.Limits{MaxIncomingStreams: 1})
	pc := p.get(t)
	req, _ := http.NewRequest("GET", "https://web/hold", nil)
	held, err := pc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", "https://web/", strings.NewReader("payload"))
		resp, err := pc.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		done <- err
	}()
	testkit.Eventually(t, "the second request to wait for a stream", func() bool {
		select {
		case err := <-done:
			t.Fatalf("the request beyond the stream limit ended without waiting: %v", err)
		default:
		}
		return pc.cc.State().StreamsPending == 1
	})
	if !pc.Alive() || p.get(t) != pc {
		t.Fatal("a full connection is no longer handed out")
	}
	held.Body.Close()
	if err := <-done; err != nil {
		t.Fatalf("the waiting request: %v", err)
	}
	if n := srv.posts.Load(); n != 1 {
		t.Fatalf("the server saw %d POSTs, want 1", n)
	}
}
