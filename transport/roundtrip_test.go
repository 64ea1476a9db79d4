package transport_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// startHTTPServer serves HTTP/3 requests with h through transport.Server,
// as the inbound proxy does, until the test ends; it returns the address.
func startHTTPServer(tb testing.TB, ca *identity.CA, h http.Handler) string {
	tb.Helper()
	ep, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(tb, ca, serverID)})
	if err != nil {
		tb.Fatal(err)
	}
	serveEach(tb, ep, func(c *transport.ServerConn) {
		c.Serve(h, func(str *transport.Stream, _ string) { str.Reset(meshcode.Reset) })
	})
	return ep.Addr().String()
}

// serveEach serves every connection peers open to ep with serve, each in
// a goroutine of its own, as the inbound proxy does, until the test ends.
func serveEach(tb testing.TB, ep *transport.Endpoint, serve func(*transport.ServerConn)) {
	srv := transport.NewServer(ep, transport.ServerConfig{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := srv.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	})
	tb.Cleanup(func() { ep.Close(); wg.Wait() })
}

// TestRoundTripWithoutBody covers the path of requests without a body
// (PeerConn.RoundTrip without quic-go's per-request goroutine) next to
// the same requests with one, which take quic-go's RoundTrip: both must
// answer alike, relay 1xx responses, and end on cancellation.
func TestRoundTripWithoutBody(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	held := make(chan struct{}, 1)
	released := make(chan error, 1)
	addr := startHTTPServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/hold":
			held <- struct{}{}
			<-r.Context().Done()
			released <- context.Cause(r.Context())
			return
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
		}
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Body", string(body))
		w.Write([]byte("hello " + r.URL.Path))
	}))
	p := newPool(t, ca, transport.Limits{})
	pc, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, path, body string
		want                     string // response body
		hints                    int    // 103 responses seen by the trace
	}{
		{name: "GET", method: "GET", path: "/a", want: "hello /a"},
		{name: "HEAD", method: "HEAD", path: "/a", want: ""},
		{name: "DELETE", method: "DELETE", path: "/d", want: "hello /d"},
		{name: "POST with a body (quic-go's path)", method: "POST", path: "/p", body: "data", want: "hello /p"},
		{name: "early hints", method: "GET", path: "/hints", want: "hello /hints", hints: 1},
		{name: "early hints with a body (quic-go's path)", method: "PUT", path: "/hints", body: "x", want: "hello /hints", hints: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hints []string
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hints = append(hints, h.Get("Link"))
				return nil
			}}
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, err := http.NewRequestWithContext(ctx, tc.method, "https://web"+tc.path, body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := pc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 || string(got) != tc.want || resp.Request != req {
				t.Fatalf("status %d, body %q, request %p; want 200, %q, %p", resp.StatusCode, got, resp.Request, tc.want, req)
			}
			if m, b := resp.Header.Get("X-Method"), resp.Header.Get("X-Body"); tc.method != "HEAD" && (m != tc.method || b != tc.body) {
				t.Fatalf("the server saw %s with body %q", m, b)
			}
			if len(hints) != tc.hints || tc.hints > 0 && hints[0] != "</style.css>; rel=preload" {
				t.Fatalf("1xx responses seen: %q, want %d with the Link field", hints, tc.hints)
			}
		})
	}

	t.Run("cancelled while waiting for the response", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://web/hold", nil)
		go func() { <-held; cancel() }()
		resp, err := pc.RoundTrip(req)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, %v; want context.Canceled", resp, err)
		}
		// The server's request ends: the stream was reset.
		if cause := <-released; cause == nil {
			t.Fatal("the server's request context ended without a cause")
		}
	})
}

// BenchmarkPeerConnRoundTrip is one GET through PeerConn.RoundTrip to a
// transport.Server on loopback, the response body read and closed:
// allocs/op and goroutines/op are the client's and the server's (the
// same process); the server's are constant across client changes.
func BenchmarkPeerConnRoundTrip(b *testing.B) {
	pc := benchPeerConn(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	}))
	req, _ := http.NewRequest("GET", "https://web/", nil)
	before := goroutinesCreated()
	benchRoundTrips(b, pc, req)
	b.ReportMetric(float64(goroutinesCreated()-before)/float64(b.N), "goroutines/op")
}

// benchPeerConn is a client connection to a transport.Server on
// loopback that serves h.
func benchPeerConn(b *testing.B, h http.Handler) *transport.PeerConn {
	ca := identitytest.NewCA(b, "t.local")
	addr := startHTTPServer(b, ca, h)
	p := newPool(b, ca, transport.Limits{})
	pc, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		b.Fatal(err)
	}
	return pc
}

// benchRoundTrips sends req through pc b.N times, reading and closing
// each response's body; a status other than 200 fails.
func benchRoundTrips(b *testing.B, pc *transport.PeerConn, req *http.Request) {
	b.ReportAllocs()
	for b.Loop() {
		resp, err := pc.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// goroutinesCreated counts the goroutines started so far in the process.
func goroutinesCreated() uint64 {
	// runtime/metrics has no counter of created goroutines; the
	// scheduler's goid allocation is not exported either, so start a
	// goroutine and read its ID.
	ch := make(chan uint64)
	go func() { ch <- currentGoroutineID() }()
	return <-ch
}

// currentGoroutineID parses the calling goroutine's ID from its stack.
func currentGoroutineID() uint64 {
	var buf [64]byte
	s := string(buf[:runtime.Stack(buf[:], false)])
	s = strings.TrimPrefix(s, "goroutine ")
	var id uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}

// BenchmarkRequestFields is one GET through PeerConn.RoundTrip (client
// and server in this process, the server's handler answering at once)
// with the request fields an outbound sidecar sends for the benchmark's
// HTTP/1.1 GET, keyed as a server-side http.Header has them (canonical)
// or already in HTTP/3's lower case; and without the mesh field. The
// differences are what a field costs on the hop: quic-go lower-cases
// every name that is not lower case already (an allocation each),
// Huffman-codes names and values outside QPACK's static table, and the
// server Huffman-decodes and canonicalises them.
func BenchmarkRequestFields(b *testing.B) {
	pc := benchPeerConn(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") == "" {
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	for _, tc := range []struct {
		name   string
		header http.Header
	}{
		{"canonical", http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "Quicmesh-Service": {"web"}}},
		{"lowercase", http.Header{"user-agent": {"Go-http-client/1.1"}, "accept-encoding": {"gzip"}, "quicmesh-service": {"web"}}},
		{"lowercase-mesh-only", http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "quicmesh-service": {"web"}}},
		{"no-mesh-field", http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			req, _ := http.NewRequest("GET", "https://127.0.0.1:8080/", nil)
			req.Header = tc.header
			benchRoundTrips(b, pc, req)
		})
	}
}

// TestRoundTripBodyFraming pins what a request with a body must carry
// to the server: its declared length (or none when unknown), its body
// and its trailers. Requests with a body take quic-go's RoundTrip
// because quic-go's public API can frame nothing else correctly:
// RequestStream.SendRequestHeader refuses a request with a body, and a
// copy without one is sent as "content-length: 0" for POST, PUT and
// PATCH; request trailers can only be sent by quic-go itself
// (docs/benchmarks.md, "Requests with a body on the own path").
func TestRoundTripBodyFraming(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	addr := startHTTPServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Length", strconv.FormatInt(r.ContentLength, 10))
		w.Header().Set("X-Body", string(body))
		w.Header().Set("X-Trailer", r.Trailer.Get("X-Sum"))
	}))
	p := newPool(t, ca, transport.Limits{})
	pc, err := p.Get(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, method, body string
		unknownLength      bool // the body's length is not declared
		trailer            string
		wantLength         int64 // r.ContentLength on the server
	}{
		{name: "POST, length declared", method: "POST", body: "data", wantLength: 4},
		{name: "POST, length unknown (gRPC)", method: "POST", body: "data", unknownLength: true, wantLength: -1},
		{name: "PUT, length unknown", method: "PUT", body: "put", unknownLength: true, wantLength: -1},
		{name: "PATCH, length declared", method: "PATCH", body: "p", wantLength: 1},
		{name: "POST with trailers (chunked HTTP/1 request)", method: "POST", body: "abc", unknownLength: true, trailer: "7", wantLength: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(tc.body)
			if tc.unknownLength {
				body = io.MultiReader(body) // hides the length from NewRequest
			}
			req, err := http.NewRequest(tc.method, "https://web/", body)
			if err != nil {
				t.Fatal(err)
			}
			if tc.trailer != "" {
				req.Trailer = http.Header{"X-Sum": {tc.trailer}}
			}
			resp, err := pc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != http.StatusOK || h.Get("X-Length") != strconv.FormatInt(tc.wantLength, 10) ||
				h.Get("X-Body") != tc.body || h.Get("X-Trailer") != tc.trailer {
				t.Fatalf("status %d; the server saw length %s, body %q, trailer %q; want %d, %q, %q",
					resp.StatusCode, h.Get("X-Length"), h.Get("X-Body"), h.Get("X-Trailer"), tc.wantLength, tc.body, tc.trailer)
			}
		})
	}
}

// BenchmarkPeerConnRoundTripPOST is BenchmarkPeerConnRoundTrip with a
// 64-byte request body of undeclared length, as a gRPC unary call has:
// the path quic-go's RoundTrip takes (a context watcher and a body
// sender per request, and an 8 KiB copy buffer).
func BenchmarkPeerConnRoundTripPOST(b *testing.B) {
	pc := benchPeerConn(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok\n"))
	}))
	body := &rewindBody{data: make([]byte, 64)}
	req, _ := http.NewRequest("POST", "https://web/", body)
	req.ContentLength = -1
	before := goroutinesCreated()
	b.ReportAllocs()
	for b.Loop() {
		body.off.Store(0)
		resp, err := pc.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(goroutinesCreated()-before)/float64(b.N), "goroutines/op")
}

// rewindBody is a request body a benchmark sends again each round:
// Close does not end it, and setting off to 0 rewinds it. It is read
// by one goroutine per round trip; the round trip's end (the response
// read) does not wait for the sender, so off is atomic.
type rewindBody struct {
	data []byte
	off  atomic.Int64
}

func (b *rewindBody) Read(p []byte) (int, error) {
	off := int(b.off.Load())
	if off >= len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[off:])
	b.off.Add(int64(n))
	return n, nil
}

func (b *rewindBody) Close() error { return nil }
