package h1client

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"testing"
)

// FuzzReadResponse checks the response parser against net/http's, on
// the bytes of a whole response: whatever this parser accepts (head,
// body, trailers) net/http's ReadResponse must accept too, with the same
// status, body, trailers and connection reuse. This parser may refuse
// more (obs-fold, conflicting framing, control bytes): it is the
// stricter of the two by design, never the looser.
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
		"HTTP/1.1 200 OK\nX-A: b\n\nbare",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA \r\n0123456789\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		hr := &headReader{br: bufio.NewReader(bytes.NewReader(data)), limit: 64 << 10}
		resp, fr, err := hr.read(method, nil)
		if err != nil {
			return
		}
		b := responseBody(nil, hr, resp, fr)
		body, err := io.ReadAll(b)
		if err != nil {
			return
		}

		// net/http, skipping interim responses as the client does.
		br := bufio.NewReader(bytes.NewReader(data))
		req := &http.Request{Method: method}
		var want *http.Response
		for {
			want, err = http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("accepted here, refused by net/http: %v\n%q", err, data)
			}
			if want.StatusCode >= 200 {
				break
			}
		}
		wantBody, err := io.ReadAll(want.Body)
		if err != nil {
			t.Fatalf("body accepted here, refused by net/http: %v\n%q", err, data)
		}
		if resp.StatusCode != want.StatusCode {
			t.Fatalf("status %d, net/http %d\n%q", resp.StatusCode, want.StatusCode, data)
		}
		if !bytes.Equal(body, wantBody) {
			t.Fatalf("body %q, net/http %q\n%q", body, wantBody, data)
		}
		if resp.Close != want.Close {
			t.Fatalf("close %v, net/http %v\n%q", resp.Close, want.Close, data)
		}
		if !maps.EqualFunc(resp.Trailer, want.Trailer, slices.Equal) {
			t.Fatalf("trailer %v, net/http %v\n%q", resp.Trailer, want.Trailer, data)
		}
		for k, vv := range resp.Header {
			if k == "Connection" || k == "Content-Length" {
				continue // net/http rewrites these
			}
			if !slices.Equal(vv, want.Header[k]) {
				t.Fatalf("header %s = %q, net/http %q\n%q", k, vv, want.Header[k], data)
			}
		}
	})
}
