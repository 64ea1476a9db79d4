package httpx

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func newRequest(mod func(r *http.Request)) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://app.local/", nil)
	mod(r)
	return r
}

func TestValidateRequest(t *testing.T) {
	big := strings.Repeat("a", 64<<10)
	tests := []struct {
		name   string
		mod    func(r *http.Request)
		status int // 0: valid
		reason string
	}{
		{"valid GET", func(r *http.Request) {}, 0, ""},
		{"valid chunked POST", func(r *http.Request) {
			r.Method, r.TransferEncoding, r.ContentLength = "POST", []string{"chunked"}, -1
		}, 0, ""},
		{"valid CL POST", func(r *http.Request) { r.Method = "POST"; r.Header.Set("Content-Length", "5") }, 0, ""},
		{"identical duplicate CL", func(r *http.Request) { r.Header["Content-Length"] = []string{"5", " 5"} }, 0, ""},
		{"TE trailers", func(r *http.Request) { r.Header.Set("Te", "trailers") }, 0, ""},
		{"obs-text value", func(r *http.Request) { r.Header.Set("X-Name", "caf\xc3\xa9") }, 0, ""},
		{"HTAB in value", func(r *http.Request) { r.Header.Set("X-A", "a\tb") }, 0, ""},
		{"HTTP/1.0 without Host", func(r *http.Request) { r.Proto, r.ProtoMinor, r.Host = "HTTP/1.0", 0, "" }, 0, ""},
		{"HTTP/2", func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0 }, 0, ""},
		{"IPv6 host with port", func(r *http.Request) { r.Host = "[::1]:8080" }, 0, ""},
		{"valid trailer name", func(r *http.Request) { r.Trailer = http.Header{"Grpc-Status": nil} }, 0, ""},

		{"NUL in value", func(r *http.Request) { r.Header["X-A"] = []string{"a\x00b"} }, 400, "invalid header field value"},
		{"CR in value", func(r *http.Request) { r.Header["X-A"] = []string{"a\rb"} }, 400, "invalid header field value"},
		{"LF in value", func(r *http.Request) { r.Header["X-A"] = []string{"a\nInjected: 1"} }, 400, "invalid header field value"},
		{"DEL in value", func(r *http.Request) { r.Header["X-A"] = []string{"a\x7fb"} }, 400, "invalid header field value"},
		{"space in name", func(r *http.Request) { r.Header["X A"] = []string{"1"} }, 400, "invalid header field name"},
		{"colon in name", func(r *http.Request) { r.Header["X:A"] = []string{"1"} }, 400, "invalid header field name"},
		{"NUL in name", func(r *http.Request) { r.Header["X\x00A"] = []string{"1"} }, 400, "invalid header field name"},
		{"empty name", func(r *http.Request) { r.Header[""] = []string{"1"} }, 400, "invalid header field name"},
		{"non-ASCII name", func(r *http.Request) { r.Header["X-\xc3\xa9"] = []string{"1"} }, 400, "invalid header field name"},
		{"bad trailer name", func(r *http.Request) { r.Trailer = http.Header{"Bad Name": nil} }, 400, "invalid trailer field name"},
		{"CL and TE (header)", func(r *http.Request) {
			r.Header.Set("Content-Length", "5")
			r.Header.Set("Transfer-Encoding", "chunked")
		}, 400, "both Content-Length and Transfer-Encoding"},
		{"CL and TE (field)", func(r *http.Request) {
			r.Header.Set("Content-Length", "5")
			r.TransferEncoding = []string{"chunked"}
		}, 400, "both Content-Length and Transfer-Encoding"},
		{"CL and TE, non-canonical keys", func(r *http.Request) {
			r.Header["content-length"] = []string{"5"}
			r.Header["transfer-encoding"] = []string{"chunked"}
		}, 400, "both Content-Length and Transfer-Encoding"},
		{"differing CL", func(r *http.Request) { r.Header["Content-Length"] = []string{"5", "6"} }, 400, "multiple differing Content-Length values"},
		{"CL list", func(r *http.Request) { r.Header.Set("Content-Length", "5, 5") }, 400, "invalid Content-Length"},
		{"negative CL", func(r *http.Request) { r.Header.Set("Content-Length", "-1") }, 400, "invalid Content-Length"},
		{"empty CL", func(r *http.Request) { r.Header.Set("Content-Length", "") }, 400, "invalid Content-Length"},
		{"huge CL", func(r *http.Request) { r.Header.Set("Content-Length", "99999999999999999999") }, 400, "invalid Content-Length"},
		{"TE xchunked", func(r *http.Request) { r.TransferEncoding = []string{"xchunked"} }, 400, "Transfer-Encoding other than chunked"},
		{"TE chunked, identity", func(r *http.Request) { r.Header.Set("Transfer-Encoding", "chunked, identity") }, 400, "Transfer-Encoding other than chunked"},
		{"TE twice", func(r *http.Request) { r.TransferEncoding = []string{"chunked", "chunked"} }, 400, "Transfer-Encoding other than chunked"},
		{"TE in HTTP/1.0", func(r *http.Request) {
			r.Proto, r.ProtoMinor = "HTTP/1.0", 0
			r.TransferEncoding = []string{"chunked"}
		}, 400, "Transfer-Encoding in an HTTP/1.0 request"},
		{"missing Host", func(r *http.Request) { r.Host = "" }, 400, "missing Host"},
		{"missing authority in HTTP/2", func(r *http.Request) { r.ProtoMajor, r.ProtoMinor, r.Host = 2, 0, "" }, 400, "missing Host"},
		{"Host with space", func(r *http.Request) { r.Host = "a b" }, 400, "invalid Host"},
		{"Host with slash", func(r *http.Request) { r.Host = "a/b" }, 400, "invalid Host"},
		{"Host with NUL", func(r *http.Request) { r.Host = "a\x00" }, 400, "invalid Host"},
		{"HTTP/0.9", func(r *http.Request) { r.ProtoMajor, r.ProtoMinor = 0, 9 }, 400, "unsupported HTTP version"},
		{"oversize fields", func(r *http.Request) {
			for i := range 20 {
				r.Header.Add("X-Big", big+string(rune('a'+i)))
			}
		}, 431, "header fields too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRequest(newRequest(tt.mod))
			if tt.status == 0 {
				if err != nil {
					t.Fatalf("ValidateRequest = %v, want nil", err)
				}
				return
			}
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("ValidateRequest = %v, want *RequestError", err)
			}
			if re.Status != tt.status || re.Reason != tt.reason {
				t.Fatalf("got (%d, %q), want (%d, %q)", re.Status, re.Reason, tt.status, tt.reason)
			}
		})
	}
}

func TestWriteValidationError(t *testing.T) {
	tests := []struct {
		err        error
		status     int
		headerWant string
	}{
		{BadRequest("no authority"), 400, "request rejected: no authority"},
		{&RequestError{Status: 431, Reason: "header fields too large"}, 431, "request rejected: header fields too large"},
		{errors.New("plain error"), 400, "request rejected: invalid request"},
		{&RequestError{Status: 200, Reason: "bogus\r\nInjected: 1"}, 400, "request rejected: bogus  Injected: 1"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		WriteValidationError(rec, tt.err)
		if rec.Code != tt.status || rec.Header().Get(HeaderProxyError) != tt.headerWant {
			t.Errorf("%v: got (%d, %q), want (%d, %q)", tt.err, rec.Code, rec.Header().Get(HeaderProxyError), tt.status, tt.headerWant)
		}
	}
}

func TestGuardRecorder(t *testing.T) {
	called := false
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true })
	h := Guard(next)

	rec := httptest.NewRecorder()
	r := newRequest(func(r *http.Request) { r.Header["X-A"] = []string{"a\nb"} })
	h.ServeHTTP(rec, r)
	if called || rec.Code != 400 || rec.Header().Get("Connection") != "close" || rec.Header().Get(HeaderProxyError) == "" {
		t.Fatalf("bad request: called=%v code=%d header=%v", called, rec.Code, rec.Header())
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, newRequest(func(r *http.Request) { r.ProtoMajor, r.ProtoMinor = 2, 0; r.Header["X-A"] = []string{"\x00"} }))
	if rec.Header().Get("Connection") != "" {
		t.Fatal("Connection: close set on an HTTP/2 response")
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, newRequest(func(r *http.Request) {}))
	if !called || rec.Code != 200 {
		t.Fatalf("good request: called=%v code=%d", called, rec.Code)
	}
}

// Over HTTP/2 Guard validates but never consults an inspector, and over TLS
// (net/http hands ConnContext a *tls.Conn) there is none to consult.
func TestGuardHTTP2AndTLS(t *testing.T) {
	var calls int
	srv := httptest.NewUnstartedServer(Guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		io.WriteString(w, r.Proto)
	})))
	srv.Listener = InspectListener(srv.Listener)
	srv.Config.ConnContext = ConnContext
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	for _, h2 := range []bool{true, false} {
		client := srv.Client()
		if !h2 {
			tr := client.Transport.(*http.Transport).Clone()
			tr.ForceAttemptHTTP2 = false
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			client = &http.Client{Transport: tr}
		}
		for range 3 {
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || (h2 && string(body) != "HTTP/2.0") || (!h2 && string(body) != "HTTP/1.1") {
				t.Fatalf("h2=%v: %d %q (%s)", h2, resp.StatusCode, body, resp.Header.Get(HeaderProxyError))
			}
		}
	}
	if calls != 6 {
		t.Fatalf("next called %d times, want 6", calls)
	}
}
