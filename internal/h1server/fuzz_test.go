package h1server

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var headSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /x?y=1 HTTP/1.1\r\nHost: a:80\r\nUser-Agent: t\r\nAccept: */*\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
	"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"GET http://b/c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
	"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
	// Refused or declined here, to be handled by the fallback.
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
	"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n  folded\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
}

// FuzzParseHead is differential: whatever head this parser accepts,
// http.ReadRequest accepts too, with the same method, URL, host, fields,
// framing and Close; and the body read by this server's reader is the
// one net/http reads (or this one fails where net/http may not: it is
// the stricter). This parser may decline more (it then falls back): it
// is never the looser of the two.
func FuzzParseHead(f *testing.F) {
	for _, s := range headSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > bufSize {
			return
		}
		end, err := findHeadEnd(data, 0)
		if err != nil || end == 0 {
			return
		}
		p, err := parseHead(data[:end])
		if err != nil {
			return
		}
		want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatalf("accepted here, refused by net/http: %v\n%q", err, data)
		}
		got := &p.req
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.URL.String() != want.URL.String() ||
			got.Host != want.Host || got.Close != want.Close || got.ContentLength != want.ContentLength ||
			!slices.Equal(got.TransferEncoding, want.TransferEncoding) {
			t.Fatalf("request differs:\n got %s %s %q host=%q close=%v cl=%d te=%v\nwant %s %s %q host=%q close=%v cl=%d te=%v\n%q",
				got.Method, got.RequestURI, got.URL, got.Host, got.Close, got.ContentLength, got.TransferEncoding,
				want.Method, want.RequestURI, want.URL, want.Host, want.Close, want.ContentLength, want.TransferEncoding, data)
		}
		// net/http keeps Host in r.Header only for HTTP/2-style hand
		// built requests; ReadRequest deletes it as the server does.
		delete(want.Header, "Host")
		if !maps.EqualFunc(got.Header, want.Header, slices.Equal) {
			t.Fatalf("fields differ:\n got %v\nwant %v\n%q", got.Header, want.Header, data)
		}
		br := bufio.NewReader(bytes.NewReader(data[end:]))
		var gotBody []byte
		var gotErr error
		if p.chunked || p.length > 0 {
			b := &body{br: br, req: got, chunked: p.chunked, n: p.length}
			gotBody, gotErr = io.ReadAll(b)
		}
		wantBody, wantErr := io.ReadAll(want.Body)
		if gotErr == nil {
			if wantErr != nil {
				t.Fatalf("body accepted here, refused by net/http: %v\n%q", wantErr, data)
			}
			if !bytes.Equal(gotBody, wantBody) {
				t.Fatalf("body differs: got %q want %q\n%q", gotBody, wantBody, data)
			}
			for k, vv := range got.Trailer {
				if !slices.Equal(vv, want.Trailer[k]) {
					t.Fatalf("trailer %s differs: got %q want %q\n%q", k, vv, want.Trailer[k], data)
				}
			}
		}
	})
}

// FuzzResponseRoundTrip writes responses with this server's writer and
// reads them back with http.ReadResponse: status, fields, body and
// trailers survive, framed as net/http frames them.
func FuzzResponseRoundTrip(f *testing.F) {
	f.Add(200, "text/plain", []byte("hello"), 1, false, false, "", false)
	f.Add(200, "", bytes.Repeat([]byte("x"), 9000), 3, true, false, "X-Sum", false)
	f.Add(204, "", []byte{}, 0, false, false, "", false)
	f.Add(304, "text/html", []byte{}, 0, false, false, "", false)
	f.Add(200, "", []byte("abc"), 1, false, true, "", true)
	f.Add(404, "a\r\nb", []byte("nope"), 2, true, false, "", false)
	f.Fuzz(func(t *testing.T, code int, ctype string, payload []byte, writes int, flush, setCL bool, trailer string, head bool) {
		if code < 200 || code > 599 || writes < 0 || writes > 8 || len(payload) > 1<<16 {
			return
		}
		for _, c := range []byte(ctype) {
			if c < ' ' && c != '\r' && c != '\n' && c != '\t' || c == 0x7f {
				return // net/http's server writes these as they are, too
			}
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		var out bytes.Buffer
		c := &conn{srv: New(Config{}), bw: bufio.NewWriterSize(&out, bufSize)}
		req := &http.Request{Method: method, ProtoMajor: 1, ProtoMinor: 1}
		w := &response{c: c, req: req, header: make(http.Header), pending: make([]byte, 0, bufSize)}
		if ctype != "" {
			w.Header().Set("Content-Type", ctype)
		}
		validTrailer := trailer != "" && isTokenString(trailer) && !strings.EqualFold(trailer, "Content-Length") &&
			!strings.EqualFold(trailer, "Transfer-Encoding") && !strings.EqualFold(trailer, "Trailer")
		if validTrailer {
			w.Header().Set("Trailer", trailer)
		}
		body := payload
		if !bodyAllowed(code) || writes == 0 {
			body = nil
		}
		if setCL && !validTrailer {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(code)
		for i := 0; i < writes; i++ {
			part := body[i*len(body)/writes : (i+1)*len(body)/writes]
			if _, err := w.Write(part); err != nil {
				t.Fatalf("write: %v", err)
			}
			if flush {
				w.Flush()
			}
		}
		if validTrailer {
			w.Header().Set(trailer, "v1")
		}
		w.Header().Set(http.TrailerPrefix+"X-Late", "v2")
		keep := w.finish()
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out.Bytes())), req)
		if err != nil {
			t.Fatalf("net/http cannot read the response: %v\n%q", err, out.Bytes())
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading the body: %v\n%q", err, out.Bytes())
		}
		if resp.StatusCode != code {
			t.Fatalf("status %d, want %d", resp.StatusCode, code)
		}
		if head {
			body = nil
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("body %d bytes, want %d\n%q", len(got), len(body), out.Bytes())
		}
		if keep == resp.Close {
			t.Fatalf("keep-alive %v but the response says close=%v\n%q", keep, resp.Close, out.Bytes())
		}
		if resp.Header.Get("Date") == "" {
			t.Fatalf("no Date\n%q", out.Bytes())
		}
		if w.chunked && !head && bodyAllowed(code) {
			if validTrailer && resp.Trailer.Get(trailer) != "v1" {
				t.Fatalf("trailer %s = %q\n%q", trailer, resp.Trailer.Get(trailer), out.Bytes())
			}
			if resp.Trailer.Get("X-Late") != "v2" {
				t.Fatalf("trailer X-Late = %q\n%q", resp.Trailer.Get("X-Late"), out.Bytes())
			}
		}
	})
}

func isTokenString(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isToken(s[i]) {
			return false
		}
	}
	return s != ""
}
