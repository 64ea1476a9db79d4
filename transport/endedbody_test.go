package transport_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/h1client"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// seenRequest is what the server's handler saw of a request.
type seenRequest struct {
	noBody        bool
	contentLength int64
	body          string
	err           error
}

// TestEndedBodies: a request whose stream ended with its header reaches
// the handler with http.NoBody (the server looks without waiting); a
// request whose body has not arrived yet, or has, keeps it whole.
func TestEndedBodies(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	started := make(chan struct{}, 1)
	seen := make(chan seenRequest, 1)
	addr := startHTTPServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/late" {
			started <- struct{}{}
		}
		s := seenRequest{noBody: r.Body == http.NoBody, contentLength: r.ContentLength}
		b, err := io.ReadAll(r.Body)
		s.body, s.err = string(b), err
		seen <- s
		w.Write([]byte("ok"))
	}))
	p := newPool(t, ca, transport.Limits{})
	pc, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(t *testing.T, req *http.Request) seenRequest {
		t.Helper()
		resp, err := pc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return <-seen
	}

	t.Run("GET ended with its header", func(t *testing.T) {
		// HEADERS and FIN usually arrive in one packet, but the sender's
		// send loop may take the HEADERS before the FIN is queued: then
		// the handler may start before the FIN is there and the body
		// stays quic-go's. At least one of 20 must be seen ended; every
		// one must read empty.
		ended := 0
		for range 20 {
			req, _ := http.NewRequest("GET", "https://web/get", nil)
			s := roundTrip(t, req)
			if s.err != nil || s.body != "" {
				t.Fatalf("body %q, error %v", s.body, s.err)
			}
			if s.noBody {
				ended++
				if s.contentLength != 0 {
					t.Fatalf("ContentLength %d with http.NoBody", s.contentLength)
				}
			}
		}
		if ended == 0 {
			t.Fatal("no GET reached the handler with http.NoBody")
		}
	})
	t.Run("body of unknown length already there", func(t *testing.T) {
		req, _ := http.NewRequest("POST", "https://web/post", io.NopCloser(strings.NewReader("abc")))
		req.ContentLength = -1
		if s := roundTrip(t, req); s.noBody || s.body != "abc" || s.err != nil {
			t.Fatalf("NoBody %v, body %q, error %v", s.noBody, s.body, s.err)
		}
	})
	t.Run("body sent after the handler started", func(t *testing.T) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("GET", "https://web/late", pr)
		req.ContentLength = -1
		go func() {
			<-started
			pw.Write([]byte("late"))
			pw.Close()
		}()
		if s := roundTrip(t, req); s.noBody || s.body != "late" || s.err != nil {
			t.Fatalf("NoBody %v, body %q, error %v", s.noBody, s.body, s.err)
		}
	})
}

// BenchmarkServerForwardGET is one GET through transport.Server, its
// handler forwarding it to an HTTP/1.1 app with internal/h1client as the
// inbound sidecar does (the app answers from a canned response). "look":
// the server gives a body that has ended http.NoBody; "probe": the
// client finds out itself (a goroutine and a yield per request).
func BenchmarkServerForwardGET(b *testing.B) {
	app := cannedApp(b)
	hc := h1client.New(h1client.Config{MaxIdleConns: 16, MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute})
	b.Cleanup(hc.CloseIdleConnections)
	pc := benchPeerConn(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = "http", app, app, ""
		resp, err := hc.RoundTrip(out)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	for _, tc := range []struct {
		name string
		skip bool
	}{{"look", false}, {"probe", true}} {
		b.Run(tc.name, func(b *testing.B) {
			transport.SkipBodyLook(tc.skip)
			defer transport.SkipBodyLook(false)
			req, _ := http.NewRequest("GET", "https://web/", nil)
			before := goroutinesCreated()
			benchRoundTrips(b, pc, req)
			b.ReportMetric(float64(goroutinesCreated()-before)/float64(b.N), "goroutines/op")
		})
	}
}

// cannedApp is an HTTP/1.1 app on loopback that answers every request
// head (requests without a body) with the same small response.
func cannedApp(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			wg.Go(func() {
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(line) <= 2 { // the blank line ending a head
						c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"))
					}
				}
			})
		}
	})
	return ln.Addr().String()
}
