package inbound

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2cSettingsApp is an h2c app that records what the client asks for
// on each connection (its SETTINGS and its connection WINDOW_UPDATE)
// and each request's pseudo-header fields; it answers 200 at once, with
// 80 KB of header fields to a request for /big-header, and echoes the
// DATA of a CONNECT.
type h2cSettingsApp struct {
	addr  string
	conns chan appConnSeen // one per connection, after its first request
	reqs  chan map[string]string
}

type appConnSeen struct {
	settings   map[http2.SettingID]uint32
	connWindow uint32 // the connection WINDOW_UPDATE's increment
}

func startH2CSettingsApp(t *testing.T) *h2cSettingsApp {
	a := &h2cSettingsApp{conns: make(chan appConnSeen, 16), reqs: make(chan map[string]string, 16)}
	a.addr = serveConns(t, a.serve)
	return a
}

func (a *h2cSettingsApp) serve(c net.Conn) {
	defer c.Close()
	br, bw := bufio.NewReader(c), bufio.NewWriter(c)
	if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	fr.WriteSettings()
	bw.Flush()
	seen := appConnSeen{settings: map[http2.SettingID]uint32{}}
	reported := false
	connects := map[uint32]bool{}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				f.ForeachSetting(func(s http2.Setting) error { seen.settings[s.ID] = s.Val; return nil })
				fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 && seen.connWindow == 0 {
				seen.connWindow = f.Increment
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if !reported {
				a.conns <- seen
				reported = true
			}
			fields := map[string]string{}
			for _, hf := range f.Fields {
				fields[hf.Name] = hf.Value
			}
			a.reqs <- fields
			hbuf.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			if fields[":path"] == "/big-header" {
				for i := range 20 { // 80 KB in fields of 4 KB
					enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: strings.Repeat("b", 4<<10)})
				}
			}
			connect := fields[":method"] == http.MethodConnect
			connects[f.StreamID] = connect
			block := hbuf.Bytes()
			first := block[:min(len(block), 16<<10)]
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: first,
				EndHeaders: len(first) == len(block), EndStream: !connect})
			for rest := block[len(first):]; len(rest) > 0; {
				n := min(len(rest), 16<<10)
				fr.WriteContinuation(f.StreamID, n == len(rest), rest[:n])
				rest = rest[n:]
			}
		case *http2.DataFrame:
			if n := uint32(len(f.Data())); n > 0 {
				fr.WriteWindowUpdate(0, n)
				fr.WriteWindowUpdate(f.StreamID, n)
				if connects[f.StreamID] {
					fr.WriteData(f.StreamID, false, f.Data())
				}
			}
			if f.StreamEnded() && connects[f.StreamID] {
				fr.WriteData(f.StreamID, true, nil)
			}
		}
		if bw.Flush() != nil {
			return
		}
	}
}

// TestH2CFallback sends through LocalApps what h2client leaves to its
// fallback (h2cPool) and checks what the app sees: each connection asks
// for the windows and header bound the pool is set up with, and carries
// at most streamsPerConn requests. Run with -tags nethttpomithttp2 too
// (make test): before the pool moved onto x/net/http2, net/http's
// Transport without its bundled HTTP/2 failed every request ("http:
// HTTP/2 implementation does not support NewClientConn"). A response header section over the bound failed
// the whole connection with the bundled copy (PROTOCOL_ERROR); with
// x/net/http2 v0.62 only its request fails.
func TestH2CFallback(t *testing.T) {
	const streamWindow, streamsPerConn = 32 << 10, 2
	app := startH2CSettingsApp(t)
	apps := NewLocalApps(5*time.Second, streamWindow, streamsPerConn)
	t.Cleanup(apps.Close)
	ctx, cancel := context.WithDeadline(context.Background(), testkit.HangGuard(t))
	defer cancel()

	nextReq := func(t *testing.T) map[string]string {
		t.Helper()
		select {
		case got := <-app.reqs:
			return got
		case <-ctx.Done():
			t.Fatal("the app saw no request")
			return nil
		}
	}
	newReq := func(method, path string, body io.Reader) *http.Request {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+app.addr+path, body)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	for _, tc := range []struct {
		name    string
		req     func() *http.Request
		wantErr string            // "" for a 200
		want    map[string]string // pseudo-header fields the app saw
	}{
		{"host that needs IDNA", func() *http.Request {
			r := newReq(http.MethodGet, "/", nil)
			r.Host = "bücher.example"
			return r
		}, "", map[string]string{":method": "GET", ":authority": "xn--bcher-kva.example", ":path": "/"}},
		{"Expect: the body goes out without waiting", func() *http.Request {
			r := newReq(http.MethodPost, "/e", strings.NewReader("body"))
			r.Header.Set("Expect", "100-continue")
			return r
		}, "", map[string]string{":method": "POST", ":path": "/e", "expect": "100-continue"}},
		{"response header section over the bound", func() *http.Request {
			r := newReq(http.MethodGet, "/big-header", nil)
			r.Header.Set("Expect", "100-continue") // to the fallback
			return r
		}, "response header list larger than advertised limit", map[string]string{":path": "/big-header"}},
		{"Upgrade is refused before the app", func() *http.Request {
			r := newReq(http.MethodGet, "/u", nil)
			r.Header.Set("Upgrade", "websocket")
			return r
		}, "invalid Upgrade request header", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := apps.RoundTrip(tc.req(), true)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			switch {
			case tc.wantErr == "" && (err != nil || resp.StatusCode != 200):
				t.Fatalf("got %v, %v; want 200", resp, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, %v; want an error naming %q", resp, err, tc.wantErr)
			}
			if tc.want == nil {
				return
			}
			got := nextReq(t)
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("the app saw %s %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
		})
	}

	t.Run("CONNECT, at most streamsPerConn on a connection", func(t *testing.T) {
		// streamsPerConn+1 tunnels stay open at once: two connections.
		type tunnel struct {
			w    *io.PipeWriter
			resp *http.Response
		}
		var tuns []tunnel
		for range streamsPerConn + 1 {
			pr, pw := io.Pipe()
			req := newReq(http.MethodConnect, "", pr)
			req.Host = "upstream.example:443"
			resp, err := apps.RoundTrip(req, true)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %s", resp.Status)
			}
			if got := nextReq(t); got[":method"] != "CONNECT" || got[":authority"] != "upstream.example:443" {
				t.Errorf("the app saw %v", got)
			}
			tuns = append(tuns, tunnel{pw, resp})
		}
		for i, tun := range tuns {
			go tun.w.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(tun.resp.Body, buf); err != nil || string(buf) != "ping" {
				t.Errorf("tunnel %d read %q, %v", i, buf, err)
			}
			tun.w.Close()
			tun.resp.Body.Close()
		}
	})

	// Every connection the fallback opened asked for the pool's windows
	// and header bound.
	n := 0
	for len(app.conns) > 0 {
		seen := <-app.conns
		n++
		if got := seen.settings[http2.SettingInitialWindowSize]; got != streamWindow {
			t.Errorf("connection %d: SETTINGS_INITIAL_WINDOW_SIZE %d, want %d", n, got, streamWindow)
		}
		if got := seen.connWindow; got != streamWindow*streamsPerConn {
			t.Errorf("connection %d: connection WINDOW_UPDATE %d, want %d (stream window × streams per connection)", n, got, streamWindow*streamsPerConn)
		}
		if got := seen.settings[http2.SettingMaxHeaderListSize]; got < appMaxResponseHeaderBytes || got > appMaxResponseHeaderBytes+1024 {
			t.Errorf("connection %d: SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d and a little room", n, got, appMaxResponseHeaderBytes)
		}
	}
	if n != 2 {
		t.Errorf("the fallback opened %d connections for requests at most %d at a time, %d per connection; want 2", n, streamsPerConn+1, streamsPerConn)
	}
}
