package inbound

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// rawApp answers every request it reads with resp and keeps the
// connection: an app whose bytes the test controls.
func rawApp(t *testing.T, resp string) string {
	ln := testkit.Listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestLocalAppsHTTP1 forwards through LocalApps' HTTP/1.1 client to
// apps on loopback: the answers of a well-behaved app come through, a
// malformed answer becomes a bad gateway (502) naming the app and the
// fault.
func TestLocalAppsHTTP1(t *testing.T) {
	testkit.CheckLeaks(t)
	apps := NewLocalApps(time.Second, 0, 0)
	t.Cleanup(apps.Close)
	tests := []struct {
		name       string
		resp       string
		bodyless   bool // an HTTP/3 GET: a body of unknown length with nothing in it
		wantStatus int
		wantBody   string
		wantErr    string
	}{
		{name: "length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", wantStatus: 200, wantBody: "ok"},
		{name: "HTTP/3 GET", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", bodyless: true, wantStatus: 200, wantBody: "ok"},
		{name: "chunked", resp: "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", wantStatus: 201, wantBody: "ok"},
		{name: "conflicting lengths", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", wantErr: "conflicting Content-Length"},
		{name: "length and chunked", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", wantErr: "both Content-Length and Transfer-Encoding"},
		{name: "folded header", resp: "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", wantErr: "obsolete line folding"},
		{name: "huge header", resp: "HTTP/1.1 200 OK\r\nX-A: " + strings.Repeat("a", 65<<10) + "\r\n\r\n", wantErr: "exceeds 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := rawApp(t, tt.resp)
			c, w := newCall("GET", "web", nil)
			c.r.Proto, c.r.ProtoMajor, c.r.ProtoMinor = "HTTP/3.0", 3, 0
			if tt.bodyless {
				c.r.Body, c.r.ContentLength = io.NopCloser(strings.NewReader("")), -1
			}
			c.r = c.r.WithContext(testkit.HangCtx(t))
			c.route = route{proto: ProtoHTTP, addr: addr}
			res, err := forward{up: apps, log: discard}.serveHTTP(c)
			if tt.wantErr == "" {
				if err != nil || res.Status != tt.wantStatus || w.Body.String() != tt.wantBody {
					t.Fatalf("result %+v, %v, body %q; want %d %q", res, err, w.Body, tt.wantStatus, tt.wantBody)
				}
				return
			}
			var f *httpFailure
			if !errors.As(err, &f) || f.kind != bridge.BadGateway || !strings.Contains(f.reason, tt.wantErr) || !strings.HasPrefix(f.reason, "app "+addr) {
				t.Fatalf("err %v, want a bad gateway naming the app and %q", err, tt.wantErr)
			}
			// What the peer gets: 502.
			rec := httptest.NewRecorder()
			writeFailure(&httpCall{w: rec, r: c.r}, "inbound test", f)
			if rec.Code != http.StatusBadGateway {
				t.Errorf("status %d, want 502", rec.Code)
			}
		})
	}
}
