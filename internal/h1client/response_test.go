package h1client

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// cannedServer answers every request on every connection with the bytes
// of respond (called with the request head), then closes the connection
// if close is set, else reads the next request.
func cannedServer(t *testing.T, close bool, respond func(head string) string) string {
	t.Helper()
	ln := testkit.Listen(t)
	go serveRaw(ln, func(head string) (string, bool) { return respond(head), !close })
	return ln.Addr().String()
}

// serveRaw answers each request head read on each connection accepted
// from ln with what respond returns, until it says not to go on.
func serveRaw(ln net.Listener, respond func(head string) (resp string, more bool)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				head, err := readRequestHead(br)
				if err != nil {
					return
				}
				resp, more := respond(head)
				if _, err := io.WriteString(c, resp); err != nil || !more {
					return
				}
			}
		}()
	}
}

// readRequestHead reads a request head (no body: the raw servers here
// are asked only GET and HEAD).
func readRequestHead(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		sb.WriteString(line)
		if line == "\r\n" {
			return sb.String(), nil
		}
	}
}

func newTestClient(t *testing.T, cfg Config) *Client {
	if cfg.MaxResponseHeaderBytes == 0 {
		cfg.MaxResponseHeaderBytes = 64 << 10
	}
	if cfg.Fallback == nil {
		cfg.Fallback = roundTripFunc(func(*http.Request) (*http.Response, error) {
			return nil, errors.New("unexpected fallback")
		})
	}
	c := New(cfg)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestResponses runs the client against raw servers that send valid,
// edge and malformed responses: the framing, the trailers and the
// interim responses come out as net/http's client gives them, and what a
// proxy must not guess at is refused with a ProtocolError.
func TestResponses(t *testing.T) {
	testkit.CheckLeaks(t)
	big := strings.Repeat("a", 70<<10)
	tests := []struct {
		name     string
		method   string
		resp     string
		close    bool // the server closes after the response
		status   int
		body     string
		trailer  http.Header // after the body
		declared []string    // resp.Trailer keys before the body
		interim  []int       // 1xx codes seen by the trace
		header   http.Header // fields that must be in the response
		wantErr  string      // substring of the RoundTrip or body error
		proto    bool        // the error is a *ProtocolError
	}{
		{name: "content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", status: 200, body: "hello", header: http.Header{"X-A": {"1", "2"}}},
		{name: "same content-length twice", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", status: 200, body: "ok"},
		{name: "bare LF line ends", resp: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", status: 200, body: "ok"},
		{name: "obs-text value", resp: "HTTP/1.1 200 OK\r\nX-T: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n", status: 200, header: http.Header{"X-T": {"caf\xc3\xa9"}}},
		{name: "no reason phrase", resp: "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", status: 200},
		{name: "chunked with trailers", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\nX-Late: y\r\n\r\n", status: 200, body: "hello world", declared: []string{"X-Sum"}, trailer: http.Header{"X-Sum": {"42"}, "X-Late": {"y"}}},
		{name: "chunked, size with blanks and upper hex", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\nA \r\n0123456789\r\n0\r\n\r\n", status: 200, body: "0123456789"},
		{name: "until close", resp: "HTTP/1.1 200 OK\r\n\r\nstreamed to the end", close: true, status: 200, body: "streamed to the end"},
		{name: "HTTP/1.0 until close", resp: "HTTP/1.0 200 OK\r\n\r\nold", close: true, status: 200, body: "old"},
		{name: "HEAD with length", method: "HEAD", resp: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", status: 200, header: http.Header{"Content-Length": {"10"}}},
		{name: "204", resp: "HTTP/1.1 204 No Content\r\n\r\n", status: 204},
		{name: "304 with length", resp: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", status: 304},
		{name: "interim responses", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", status: 200, body: "ok", interim: []int{100, 103}},

		{name: "conflicting content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", wantErr: "conflicting Content-Length", proto: true},
		{name: "content-length list", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", wantErr: "bad Content-Length", proto: true},
		{name: "negative content-length", resp: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", wantErr: "bad Content-Length", proto: true},
		{name: "content-length and chunked", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", wantErr: "both Content-Length and Transfer-Encoding", proto: true},
		{name: "gzip transfer coding", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", wantErr: "unsupported Transfer-Encoding", proto: true},
		{name: "chunked on HTTP/1.0", resp: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", wantErr: "HTTP/1.0", proto: true},
		{name: "bad chunk size", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", status: 200, wantErr: "bad chunk size", proto: true},
		{name: "chunk size overflow", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", status: 200, wantErr: "chunk size too large", proto: true},
		{name: "chunk size with junk", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n", status: 200, wantErr: "bad chunk size", proto: true},
		{name: "chunk line with bare LF", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", status: 200, wantErr: "bare LF", proto: true},
		{name: "trailer with bare LF", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-A: 1\n\r\n", status: 200, body: "ok", wantErr: "bare LF", proto: true},
		{name: "chunk without CRLF", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n", status: 200, body: "hello", wantErr: "not followed by CRLF", proto: true},
		{name: "obs-fold", resp: "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", wantErr: "obsolete line folding", proto: true},
		{name: "space before colon", resp: "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n", wantErr: "invalid header field name", proto: true},
		{name: "no colon", resp: "HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0\r\n\r\n", wantErr: "without a field name", proto: true},
		{name: "control byte in value", resp: "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n", wantErr: "invalid byte in value", proto: true},
		{name: "bare CR in value", resp: "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", wantErr: "invalid byte in value", proto: true},
		{name: "HTTP/2 status line", resp: "HTTP/2.0 200 OK\r\n\r\n", wantErr: "bad status line", proto: true},
		{name: "short status code", resp: "HTTP/1.1 20 OK\r\n\r\n", wantErr: "bad status", proto: true},
		{name: "not HTTP", resp: "ICY 200 OK\r\n\r\n", wantErr: "bad status line", proto: true},
		{name: "unasked 101", resp: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", wantErr: "101", proto: true},
		{name: "trailer names a framing field", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\n\r\n", wantErr: "bad trailer key", proto: true},
		{name: "header too large", resp: "HTTP/1.1 200 OK\r\nX-Big: " + big + "\r\nContent-Length: 0\r\n\r\n", wantErr: "exceeds 65536 bytes"},
		{name: "trailers too large", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Big: " + big + "\r\n\r\n", status: 200, wantErr: "exceeds 65536 bytes"},
		{name: "truncated length body", resp: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", close: true, status: 200, body: "hel", wantErr: "unexpected EOF"},
		{name: "truncated chunked body", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", close: true, status: 200, body: "hel", wantErr: "unexpected EOF"},
		{name: "truncated head", resp: "HTTP/1.1 200 OK\r\nContent-Le", close: true, wantErr: "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := cannedServer(t, tt.close, func(string) string { return tt.resp })
			c := newTestClient(t, Config{})
			var interim []int
			var interimHdr textproto.MIMEHeader
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				interim = append(interim, code)
				if code == 103 {
					interimHdr = h
				}
				return nil
			}}
			method := tt.method
			if method == "" {
				method = "GET"
			}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(testkit.HangCtx(t), trace), method, "http://"+addr+"/x", nil)
			resp, err := c.RoundTrip(req)
			var got []byte
			if err == nil {
				if resp.StatusCode != tt.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
				}
				for k, vv := range tt.header {
					if strings.Join(resp.Header[k], "|") != strings.Join(vv, "|") {
						t.Errorf("header %s = %q, want %q", k, resp.Header[k], vv)
					}
				}
				for _, k := range tt.declared {
					if _, ok := resp.Trailer[k]; !ok {
						t.Errorf("trailer %s not declared before the body: %v", k, resp.Trailer)
					}
				}
				got, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(got) != tt.body {
					t.Errorf("body %q, want %q", got, tt.body)
				}
				for k, vv := range tt.trailer {
					if strings.Join(resp.Trailer[k], "|") != strings.Join(vv, "|") {
						t.Errorf("trailer %s = %q, want %q", k, resp.Trailer[k], vv)
					}
				}
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				var pe *ProtocolError
				if tt.proto != errors.As(err, &pe) {
					t.Errorf("error %v: ProtocolError %v, want %v", err, !tt.proto, tt.proto)
				}
			}
			if len(tt.interim) > 0 {
				if len(interim) != len(tt.interim) {
					t.Errorf("interim responses %v, want %v", interim, tt.interim)
				} else if interimHdr.Get("Link") != "</a.css>" {
					t.Errorf("103 header %v, want its Link", interimHdr)
				}
			}
		})
	}
}

// TestInterimHeadLimit: without a trace hook for 1xx responses, all
// heads share the header limit, so an app cannot stream interim
// responses forever.
func TestInterimHeadLimit(t *testing.T) {
	testkit.CheckLeaks(t)
	early := strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", 2000)
	addr := cannedServer(t, true, func(string) string { return early + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" })
	c := newTestClient(t, Config{})
	req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "http://"+addr+"/", nil)
	_, err := c.RoundTrip(req)
	var tl *HeaderTooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("error %v, want HeaderTooLargeError", err)
	}
}

// TestResponseBodyEndsWithLastBytes: the body returns io.EOF with the
// last bytes when the end arrived with them (bridge.copyFlushing then
// skips a flush), for a length and for a chunked body.
func TestResponseBodyEndsWithLastBytes(t *testing.T) {
	for _, resp := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	} {
		br := bufio.NewReader(strings.NewReader(resp))
		hr := &headReader{br: br, limit: 1 << 10}
		r, f, err := hr.read("GET", nil)
		if err != nil {
			t.Fatal(err)
		}
		b := responseBody(nil, hr, r, f)
		buf := make([]byte, 64)
		n, err := b.Read(buf)
		if n != 5 || err != io.EOF {
			t.Errorf("%q: Read = %d, %v; want 5, EOF", resp, n, err)
		}
	}
}
