package outbound

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

func testProxy(peers *fakePeers) *Proxy {
	return New(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("a:1")}}, Peers: peers})
}

// A proxy closed before a listener's Serve got going (a sidecar closed
// right after Start) leaves no HTTP server running behind it.
func TestCloseBeforeServe(t *testing.T) {
	testkit.CheckLeaks(t)
	p := testProxy(&fakePeers{})
	p.Close()
	ln := testkit.Listen(t)
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln, "web", false) }()
	ln.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve on a closed proxy: %v", err)
	}
}

// Close ends every kind of app connection the same way: HTTP/1 keep-alive
// connections, HTTP/2 connections and tunnels taken over by CONNECT are
// all reset, and Close returns once they are gone.
func TestCloseResetsEveryAppConnection(t *testing.T) {
	testkit.CheckLeaks(t)
	p := testProxy(&fakePeers{newConn: func(string) *fakeConn { return &fakeConn{alive: true, holdTunnels: true} }})
	ln := testkit.Listen(t)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln, "web", false) }()
	addr := ln.Addr().String()

	// HTTP/1.1, kept alive after one request.
	h1, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	io.WriteString(h1, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	br := bufio.NewReader(h1)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTP/1 request: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)

	// h2c with prior knowledge, served: the server's SETTINGS arrived.
	// The test reads the frames itself: a client library's read loop
	// would race it for the end of the connection.
	h2conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer h2conn.Close()
	io.WriteString(h2conn, http2.ClientPreface)
	fr := http2.NewFramer(h2conn, h2conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if f, err := fr.ReadFrame(); err != nil {
		t.Fatalf("HTTP/2: %v", err)
	} else if _, ok := f.(*http2.SettingsFrame); !ok {
		t.Fatalf("HTTP/2: first frame %v, want SETTINGS", f)
	}

	// A CONNECT tunnel, open.
	tun, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	io.WriteString(tun, "CONNECT web:5432 HTTP/1.1\r\nHost: web:5432\r\n\r\n")
	tbr := bufio.NewReader(tun)
	if resp, err := http.ReadResponse(tbr, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}

	p.Close()
	ln.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := fr.ReadFrame(); err != nil {
			if err == io.EOF {
				t.Errorf("HTTP/2 connection ended cleanly after Close, want a reset")
			}
			break
		}
	}
	for name, r := range map[string]io.Reader{"HTTP/1": br, "CONNECT": tbr} {
		if _, err := io.ReadAll(r); err == nil {
			// ReadAll returns nil at a clean EOF; a reset is an error.
			t.Errorf("%s connection ended cleanly after Close, want a reset", name)
		}
	}
}

// preGrown hands the handler the writer and request it got, and what the
// handler does (write, or abort with a panic) reaches the server as if
// it had run unwrapped.
func TestPreGrown(t *testing.T) {
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		wantPanic any
	}{
		{"writes", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Seen", r.URL.Path) }, nil},
		{"aborts", func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) }, http.ErrAbortHandler},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &discardWriter{h: http.Header{}}
			r, _ := http.NewRequest("GET", "http://web/x", nil)
			got := func() (p any) {
				defer func() { p = recover() }()
				preGrown(tt.handler).ServeHTTP(w, r)
				return nil
			}()
			if got != tt.wantPanic {
				t.Fatalf("panic %v, want %v", got, tt.wantPanic)
			}
			if tt.wantPanic == nil && w.h.Get("Seen") != "/x" {
				t.Fatalf("handler saw %q, want /x", w.h.Get("Seen"))
			}
		})
	}
}
