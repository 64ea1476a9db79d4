package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestGRPCTimeout(t *testing.T) {
	tests := []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true},
		{"5S", 5 * time.Second, true},
		{"1H", time.Hour, true},
		{"2M", 2 * time.Minute, true},
		{"300u", 300 * time.Microsecond, true},
		{"7n", 7, true},
		{"", 0, false},
		{"5", 0, false},
		{"5x", 0, false},
		{"-5S", 0, false},
		{"123456789S", 0, false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "/", nil)
		if tt.v != "" {
			r.Header.Set("Grpc-Timeout", tt.v)
		}
		got, ok := GRPCTimeout(r)
		if got != tt.want || ok != tt.ok {
			t.Errorf("GRPCTimeout(%q) = %v, %v; want %v, %v", tt.v, got, ok, tt.want, tt.ok)
		}
	}
}

func TestWriteError(t *testing.T) {
	tests := []struct {
		grpc                 bool
		kind                 ErrorKind
		status               int
		grpcStatus, contains string
	}{
		{false, Unavailable, 503, "", "outbound x: boom"},
		{false, BadGateway, 502, "", "outbound x: boom"},
		{false, Timeout, 504, "", "outbound x: boom"},
		{true, Unavailable, 200, "14", ""},
		{true, BadGateway, 200, "14", ""},
		{true, Timeout, 200, "4", ""},
		{false, Forbidden, 403, "", "outbound x: boom"},
		{true, Forbidden, 200, "7", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", "/", nil)
		if tt.grpc {
			r.Header.Set("Content-Type", "application/grpc+proto")
		}
		w := httptest.NewRecorder()
		res := WriteError(w, r, tt.kind, "outbound x", "boom\r\nInjected: 1")
		if w.Code != tt.status || res.Status != tt.status || res.GRPCStatus != tt.grpcStatus {
			t.Errorf("grpc=%v kind=%v: code %d res %+v", tt.grpc, tt.kind, w.Code, res)
		}
		if got := w.Header().Get("Grpc-Status"); got != tt.grpcStatus {
			t.Errorf("grpc-status %q, want %q", got, tt.grpcStatus)
		}
		pe := w.Header().Get("Quicmesh-Proxy-Error")
		if !strings.HasPrefix(pe, "outbound x: boom") || strings.ContainsAny(pe, "\r\n") {
			t.Errorf("Quicmesh-Proxy-Error %q: must name the proxy and stay one line", pe)
		}
		if !res.Failed() && tt.status >= 500 {
			t.Errorf("result %+v not a failure", res)
		}
		if tt.grpc && !res.Failed() {
			t.Errorf("gRPC error result %+v not a failure", res)
		}
	}
}

func TestClassify(t *testing.T) {
	if Classify(context.DeadlineExceeded) != Timeout || Classify(fmt.Errorf("x: %w", context.DeadlineExceeded)) != Timeout {
		t.Error("deadline not a timeout")
	}
	if Classify(errors.New("reset")) != BadGateway {
		t.Error("plain error not a bad gateway")
	}
}

func TestPrepareOutgoingStripsAndKeeps(t *testing.T) {
	r := httptest.NewRequest("GET", "http://web:8080/p?q=1", nil)
	r.Header.Set("Connection", "keep-alive, X-Hop")
	r.Header.Set("X-Hop", "1")
	r.Header.Set("Keep-Alive", "timeout=5")
	r.Header.Set("Te", "trailers")
	r.Header.Set("Quicmesh-Peer-Identity", "spiffe://evil/x")
	r.Header.Set("Expect", "100-continue")
	r.Header.Set("X-Keep", "yes")
	out := PrepareOutgoing(context.Background(), r, "https", "web:8080")
	for _, h := range []string{"Connection", "X-Hop", "Keep-Alive", "Quicmesh-Peer-Identity", "Expect"} {
		if out.Header.Get(h) != "" {
			t.Errorf("%s forwarded", h)
		}
	}
	if out.Header.Get("Te") != "trailers" || out.Header.Get("X-Keep") != "yes" {
		t.Errorf("end-to-end headers lost: %v", out.Header)
	}
	if out.Host != "web:8080" || out.URL.String() != "https://web:8080/p?q=1" || out.RequestURI != "" {
		t.Errorf("host %q url %q uri %q", out.Host, out.URL, out.RequestURI)
	}
	if out.Body != nil {
		t.Error("body-less request forwarded with a body")
	}
	if r.Header.Get("Quicmesh-Peer-Identity") == "" {
		t.Error("PrepareOutgoing modified the incoming request's headers")
	}
	_ = http.NoBody
}

func TestDeadlinePassed(t *testing.T) {
	now := time.Now()
	expired, cancel := context.WithDeadline(context.Background(), now.Add(-time.Second))
	defer cancel()
	tests := []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"no deadline", context.Background(), false},
		{"deadline ahead", deadlineOnly{now.Add(time.Hour)}, false},
		// What context.WithDeadline cannot show: the deadline has been
		// reached but the timer that cancels the context has not run.
		{"deadline reached, not yet canceled", deadlineOnly{now.Add(-time.Millisecond)}, true},
		{"deadline exceeded and canceled", expired, true},
	}
	for _, tt := range tests {
		if got := DeadlinePassed(tt.ctx); got != tt.want {
			t.Errorf("%s: DeadlinePassed = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// deadlineOnly has a deadline but is never canceled, like a context whose
// timer has not run yet.
type deadlineOnly struct{ dl time.Time }

func (d deadlineOnly) Deadline() (time.Time, bool) { return d.dl, true }
func (deadlineOnly) Done() <-chan struct{}         { return nil }
func (deadlineOnly) Err() error                    { return nil }
func (deadlineOnly) Value(any) any                 { return nil }

// chunkedBody hands out one chunk per Read, the last one with io.EOF,
// and records how many flushes w had seen before each Read.
type chunkedBody struct {
	chunks  []string
	w       *sinkWriter
	flushed []int
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	b.flushed = append(b.flushed, b.w.flushes)
	if len(b.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.chunks[0])
	b.chunks = b.chunks[1:]
	if len(b.chunks) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestCopyFlushingStreamsAllButTheEnd: every chunk is flushed before
// the next is awaited (a streamed response is not held back), but the
// chunk that comes with the end of the body is left to the server,
// which sends it with the end of the response.
func TestCopyFlushingStreamsAllButTheEnd(t *testing.T) {
	w := &sinkWriter{h: http.Header{}}
	body := &chunkedBody{chunks: []string{"a", "b", "c"}, w: w}
	if err := copyFlushing(w, http.NewResponseController(w), body, &http.Response{}); err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 2}; !slices.Equal(body.flushed, want) {
		t.Errorf("flushes seen before each read = %v, want %v", body.flushed, want)
	}
	if w.flushes != 2 {
		t.Errorf("%d flushes, want 2 (none for the chunk that came with io.EOF)", w.flushes)
	}

	// With trailers, the last chunk is flushed too (see copyFlushing).
	w = &sinkWriter{h: http.Header{}}
	body = &chunkedBody{chunks: []string{"a", "b"}, w: w}
	withTrailers := &http.Response{Trailer: http.Header{"Grpc-Status": {"0"}}}
	if err := copyFlushing(w, http.NewResponseController(w), body, withTrailers); err != nil {
		t.Fatal(err)
	}
	if w.flushes != 2 {
		t.Errorf("%d flushes with trailers, want 2 (one per chunk)", w.flushes)
	}
}

// codesWriter records the status codes written to it and the header
// at each, as an HTTP/2 or HTTP/3 server would send them.
type codesWriter struct {
	sinkWriter
	codes   []int
	headers []http.Header
}

func (w *codesWriter) WriteHeader(code int) {
	w.codes = append(w.codes, code)
	w.headers = append(w.headers, w.h.Clone())
}

// infoTransport answers with the 1xx responses infos, through the
// request's client trace, and then with resp.
type infoTransport struct {
	infos []int
	resp  *http.Response
}

func (t *infoTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	for _, code := range t.infos {
		if err := httptrace.ContextClientTrace(r.Context()).Got1xxResponse(code, textproto.MIMEHeader{"Link": {"</a.css>"}}); err != nil {
			return nil, err
		}
	}
	return t.resp, nil
}

// TestForwardTrailersAndInformational: trailers that arrive after the
// body (gRPC's, and any other) reach the writer under "Trailer:" keys,
// mesh trailers are dropped from an app's response, and 1xx responses
// other than 100 and 101 are passed on before the final one with their
// own header only.
func TestForwardTrailersAndInformational(t *testing.T) {
	for _, tc := range []struct {
		name    string
		infos   []int
		trailer http.Header
		want    http.Header // the writer's "Trailer:" keys after Forward
		codes   []int
	}{
		{
			name:    "gRPC status",
			trailer: http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {""}},
			want:    http.Header{"Trailer:Grpc-Status": {"0"}, "Trailer:Grpc-Message": {""}},
			codes:   []int{200},
		},
		{
			name:    "gRPC error with details",
			trailer: http.Header{"Grpc-Status": {"5"}, "Grpc-Message": {"not%20found"}, "Grpc-Status-Details-Bin": {"CAU"}},
			want:    http.Header{"Trailer:Grpc-Status": {"5"}, "Trailer:Grpc-Message": {"not%20found"}, "Trailer:Grpc-Status-Details-Bin": {"CAU"}},
			codes:   []int{200},
		},
		{
			name:    "other trailers, mesh one dropped",
			trailer: http.Header{"Checksum": {"abc"}, "Quicmesh-Peer": {"forged"}},
			want:    http.Header{"Trailer:Checksum": {"abc"}},
			codes:   []int{200},
		},
		{
			name:  "early hints passed, 100 not",
			infos: []int{100, 103},
			want:  http.Header{},
			codes: []int{103, 200},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: 200, ProtoMajor: 2, Header: http.Header{"Content-Type": {"application/grpc"}}}
			resp.Body = &grpcBody{msg: []byte("msg"), resp: resp, trailer: tc.trailer}
			w := &codesWriter{sinkWriter: sinkWriter{h: http.Header{}}}
			in := httptest.NewRequest(http.MethodPost, "http://grpc/echo.Echo/Unary", strings.NewReader("x"))
			in.Header.Set("Content-Type", "application/grpc")
			res, err := Forward(w, PrepareOutgoing(context.Background(), in, "http", "127.0.0.1:1"), &infoTransport{infos: tc.infos, resp: resp}, Options{StripResponseMesh: true})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(w.codes, tc.codes) {
				t.Errorf("status codes written %v, want %v", w.codes, tc.codes)
			}
			if len(tc.codes) > 1 {
				if got := w.headers[0].Get("Link"); got != "</a.css>" {
					t.Errorf("1xx header Link = %q, want </a.css>", got)
				}
				if got := w.headers[1].Get("Link"); got != "" {
					t.Errorf("final header kept the 1xx's Link %q", got)
				}
			}
			got := http.Header{}
			for k, vv := range w.h {
				if strings.HasPrefix(k, http.TrailerPrefix) {
					got[k] = vv
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("trailers %v, want %v", got, tc.want)
			}
			if want := tc.trailer.Get("Grpc-Status"); res.GRPCStatus != want {
				t.Errorf("result grpc-status %q, want %q", res.GRPCStatus, want)
			}
		})
	}
}

// TestTrailerKeyCache checks that trailer keys come out right whether
// built, cached or past the cache's bounds, that the cache stays bounded
// when an app sends ever new names, and that concurrent forwards share it
// safely (-race).
func TestTrailerKeyCache(t *testing.T) {
	saved := trailerKeys.Load()
	trailerKeys.Store(&map[string]string{})
	t.Cleanup(func() { trailerKeys.Store(saved) })
	long := strings.Repeat("L", maxCachedTrailerKeyLen+1)
	for _, tc := range []struct {
		name, key string
		cached    bool
	}{
		{name: "Grpc-Status", key: "Trailer:Grpc-Status"},
		{name: "Echo-Trailer", key: "Trailer:Echo-Trailer", cached: true},
		{name: long, key: "Trailer:" + long},
	} {
		for range 2 { // built, then looked up
			if got := trailerKey(tc.name); got != tc.key {
				t.Errorf("trailerKey(%.20q) = %.30q, want %.30q", tc.name, got, tc.key)
			}
		}
		if _, ok := (*trailerKeys.Load())[tc.name]; ok != tc.cached {
			t.Errorf("%.20q cached: %v, want %v", tc.name, ok, tc.cached)
		}
	}

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 3 * maxCachedTrailerKeys {
				name := fmt.Sprintf("X-%d-%d", g, i)
				if got := trailerKey(name); got != http.TrailerPrefix+name {
					t.Errorf("trailerKey(%q) = %q", name, got)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := len(*trailerKeys.Load()); n != maxCachedTrailerKeys {
		t.Errorf("cache holds %d names, want the bound %d", n, maxCachedTrailerKeys)
	}
	if got := trailerKey("Echo-Trailer"); got != "Trailer:Echo-Trailer" {
		t.Errorf("after filling the cache, trailerKey(Echo-Trailer) = %q", got)
	}
}
