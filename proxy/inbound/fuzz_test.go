package inbound

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/detect"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// memStream is a tunnel stream whose far side is a fixed byte string
// followed by FIN; what the server writes is discarded.
type memStream struct {
	r *bytes.Reader
}

func (m *memStream) Read(p []byte) (int, error)       { return m.r.Read(p) }
func (m *memStream) Write(p []byte) (int, error)      { return len(p), nil }
func (m *memStream) Close() error                     { return nil }
func (m *memStream) CloseWrite() error                { return nil }
func (m *memStream) Reset(meshcode.Code)              {}
func (m *memStream) SetDeadline(time.Time) error      { return nil }
func (m *memStream) SetReadDeadline(time.Time) error  { return nil }
func (m *memStream) SetWriteDeadline(time.Time) error { return nil }

// appCheck stands in for the app's HTTP client: it records what would
// have reached the app.
type appCheck struct {
	mu     sync.Mutex
	want   string
	faults []string
}

func (a *appCheck) RoundTrip(r *http.Request) (*http.Response, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, vv := range r.Header {
		switch {
		case strings.EqualFold(k, httpx.HeaderPeerIdentity):
			if len(vv) != 1 || vv[0] != a.want {
				a.faults = append(a.faults, "identity "+strings.Join(vv, ","))
			}
		case httpx.IsMeshHeader(k):
			a.faults = append(a.faults, "mesh header "+k)
		case strings.EqualFold(k, "TE"):
			if len(vv) != 1 || vv[0] != "trailers" {
				a.faults = append(a.faults, "TE "+strings.Join(vv, ","))
			}
		case httpx.IsHopByHop(k):
			a.faults = append(a.faults, "hop-by-hop "+k)
		}
	}
	if _, ok := r.Header[httpx.HeaderPeerIdentity]; !ok {
		a.faults = append(a.faults, "no identity")
	}
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
	}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// checkUpstream is an Upstream whose HTTP requests go to an appCheck;
// it dials for real.
type checkUpstream struct{ check *appCheck }

func (u checkUpstream) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (u checkUpstream) RoundTrip(r *http.Request, _ bool) (*http.Response, error) {
	return u.check.RoundTrip(r)
}

func (u checkUpstream) Close() {}

// FuzzTunnelHTTP1 feeds arbitrary bytes, as a tunnel's payload, to the
// inbound HTTP server that serves tunnels to HTTP routes. It must end
// when the bytes do, and no request may reach the app with a Quicmesh-*
// field other than the verified identity, or a hop-by-hop field.
func FuzzTunnelHTTP1(f *testing.F) {
	seeds := []string{
		"GET / HTTP/1.1\r\nHost: web\r\nQuicmesh-Peer-Identity: spiffe://x/admin\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: Quicmesh-Peer-Identity, X-A\r\nX-A: 1\r\nTE: deflate\r\nUpgrade: h2c\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\nquicmesh-service: tcp\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n",
		"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n",
		"\x00\x01binary",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	verified := identity.MustParseID("spiffe://test.local/ns/default/sa/client")
	// The route's app is a port nothing listens on: upgrades and CONNECT
	// (which dial the app themselves) fail fast with 502.
	check := &appCheck{want: verified.String()}
	s, err := New(Config{
		Upstream: checkUpstream{check},
		Options: Options{
			Routes:         Routes{"web": "http://127.0.0.1:1"},
			ConnectTimeout: time.Second,
			HeaderTimeout:  2 * time.Second,
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		check.mu.Lock()
		check.faults = nil
		check.mu.Unlock()
		sc := newStreamConn(&memStream{r: bytes.NewReader(data)}, &net.UDPAddr{}, &net.UDPAddr{}, tunnelInfo{peer: verified, target: "web"})
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.tunnels.serve(sc, sc, detect.HTTP1)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the tunnel HTTP server still holds a connection whose bytes ended 30 s ago")
		}
		check.mu.Lock()
		defer check.mu.Unlock()
		if len(check.faults) > 0 {
			t.Fatalf("reached the app: %v", check.faults)
		}
	})
}
