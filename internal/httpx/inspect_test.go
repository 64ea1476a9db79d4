package httpx

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// validPipeline exercises every framing path the inspector follows.
const validPipeline = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
	"POST /b?q=1 HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\nContent-Length:  5 \r\n\r\nhello" +
	"\r\n" + // tolerated after a POST
	"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tChunked \r\n\r\n" +
	"5\r\nhello\r\n1a;name=\"quoted value\"\r\nabcdefghijklmnopqrstuvwxyz\r\n000\r\nX-Sum: 1\r\nX-Other:\r\n\r\n" +
	"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" +
	"GET http://x/d HTTP/1.0\r\n\r\n" +
	"DELETE /e HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n"

type wantVerdict struct {
	line string
	err  *RequestError
}

func verdicts(in *inspector) []wantVerdict {
	var out []wantVerdict
	for _, v := range in.queue {
		out = append(out, wantVerdict{v.line, v.err})
	}
	return out
}

func TestInspectorVerdicts(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   []wantVerdict
		poison *RequestError
	}{
		{
			name:   "valid pipeline",
			stream: validPipeline,
			want: []wantVerdict{
				{"GET /a", nil}, {"POST /b?q=1", nil}, {"PUT /c", nil},
				{"OPTIONS *", nil}, {"GET http://x/d", nil}, {"DELETE /e", nil},
			},
		},
		{
			name:   "CL and TE",
			stream: "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
			want:   []wantVerdict{{"POST /", errRawCLAndTE}},
			poison: errRawCLAndTE,
		},
		{
			name:   "TE in HTTP/1.0",
			stream: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
			want:   []wantVerdict{{"POST /", errRawTEHTTP10}},
			poison: errRawTEHTTP10,
		},
		{
			name:   "TE gzip",
			stream: "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
			want:   []wantVerdict{{"POST /", errRawTE}},
			poison: errRawTE,
		},
		{
			name:   "TE twice",
			stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
			want:   []wantVerdict{{"POST /", errRawTE}},
			poison: errRawTE,
		},
		{
			name:   "differing CL",
			stream: "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\n",
			want:   []wantVerdict{{"POST /", errRawCL}},
			poison: errRawCL,
		},
		{
			name:   "obs-fold",
			stream: "GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n",
			poison: errObsFold,
		},
		{
			name:   "bare LF in head",
			stream: "GET / HTTP/1.1\r\nHost: x\n\r\n",
			poison: errBareLF,
		},
		{
			name:   "bare LF after request line",
			stream: "GET / HTTP/1.1\n",
			poison: errBareLF,
		},
		{
			name:   "CR not followed by LF",
			stream: "GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
			poison: errBareLF,
		},
		{
			name:   "space before colon",
			stream: "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
			poison: errRawFieldName,
		},
		{
			name:   "HTTP/2 preface",
			stream: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			poison: errBadRequestLine,
		},
		{
			name:   "bad chunk size marks the pending verdict",
			stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			want:   []wantVerdict{{"POST /", errChunkSize}},
			poison: errChunkSize,
		},
		{
			name:   "chunk too long",
			stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
			want:   []wantVerdict{{"POST /", errChunkData}},
			poison: errChunkData,
		},
		{
			name:   "bad trailer",
			stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n X: 1\r\n\r\n",
			want:   []wantVerdict{{"POST /", errTrailer}},
			poison: errTrailer,
		},
		{
			name:   "too many CRLFs after POST",
			stream: "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
			want:   []wantVerdict{{"POST /", nil}},
			poison: errBadRequestLine,
		},
		{
			name:   "CRLF before a request not after a POST",
			stream: "GET / HTTP/1.1\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
			want:   []wantVerdict{{"GET /", nil}},
			poison: errBadRequestLine,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &inspector{}
			in.scan([]byte(tt.stream))
			if got := verdicts(in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("verdicts = %v, want %v", got, tt.want)
			}
			if in.poisonErr != tt.poison {
				t.Errorf("poison = %v, want %v", in.poisonErr, tt.poison)
			}
		})
	}
}

// The inspector's state after a stream must not depend on how reads split it.
func TestInspectorSplitInvariance(t *testing.T) {
	stream := []byte(validPipeline + "POST /x HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n")
	whole := &inspector{}
	whole.scan(stream)
	for i := 0; i <= len(stream); i++ {
		in := &inspector{}
		in.scan(stream[:i])
		in.scan(stream[i:])
		if !reflect.DeepEqual(in.queue, whole.queue) || in.poisonErr != whole.poisonErr || in.st != whole.st {
			t.Fatalf("split at %d: queue %v poison %v, want %v %v", i, in.queue, in.poisonErr, whole.queue, whole.poisonErr)
		}
	}
	in := &inspector{}
	for i := range stream {
		in.scan(stream[i : i+1])
	}
	if !reflect.DeepEqual(in.queue, whole.queue) || in.poisonErr != whole.poisonErr {
		t.Fatal("byte-at-a-time scan differs")
	}
}

func TestInspectorCheck(t *testing.T) {
	t.Run("matches in order, skipping unseen good heads", func(t *testing.T) {
		in := &inspector{}
		in.scan([]byte(validPipeline))
		for _, r := range [][2]string{{"GET", "/a"}, {"POST", "/b?q=1"}, {"PUT", "/c"}, {"GET", "http://x/d"}, {"DELETE", "/e"}} {
			if err := in.check(r[0], r[1]); err != nil {
				t.Fatalf("check(%s %s) = %v", r[0], r[1], err)
			}
		}
		if err := in.check("GET", "/more"); err != errDesync {
			t.Fatalf("check with nothing queued = %v, want %v", err, errDesync)
		}
	})
	t.Run("bad head fails the next check even if it does not match", func(t *testing.T) {
		in := &inspector{}
		in.scan([]byte("OPTIONS * HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"))
		if err := in.check("GET", "/"); err != errRawCLAndTE {
			t.Fatalf("check = %v, want %v", err, errRawCLAndTE)
		}
	})
	t.Run("poisoned connection fails later requests", func(t *testing.T) {
		in := &inspector{}
		in.scan([]byte("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX: 1\r\n 2\r\n\r\n"))
		if err := in.check("GET", "/a"); err != nil {
			t.Fatalf("first request refused: %v", err)
		}
		if err := in.check("GET", "/b"); err != errObsFold {
			t.Fatalf("second request: %v, want %v", err, errObsFold)
		}
	})
	t.Run("long request-target", func(t *testing.T) {
		target := "/" + strings.Repeat("x", 3*maxStoredLine)
		in := &inspector{}
		in.scan([]byte("GET " + target + " HTTP/1.1\r\n\r\nGET " + target + " HTTP/1.1\r\n\r\n"))
		if err := in.check("GET", target); err != nil {
			t.Fatal(err)
		}
		if err := in.check("GET", target+"z"); err != errDesync {
			t.Fatalf("different target: %v, want %v", err, errDesync)
		}
	})
	t.Run("unmatched head other than OPTIONS * is a desync", func(t *testing.T) {
		// E.g. a middleware in front of Guard answered GET /a itself.
		in := &inspector{}
		in.scan([]byte("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"))
		if err := in.check("GET", "/b"); err != errDesync {
			t.Fatalf("check = %v, want %v", err, errDesync)
		}
	})
	t.Run("TLS switches inspection off", func(t *testing.T) {
		in := &inspector{}
		in.scan([]byte{0x16, 0x03, 0x01, 0x00, 0x05})
		if err := in.check("GET", "/"); err != nil {
			t.Fatalf("check = %v, want nil", err)
		}
	})
	t.Run("pipeline depth is bounded", func(t *testing.T) {
		in := &inspector{}
		in.scan([]byte(strings.Repeat("GET / HTTP/1.1\r\n\r\n", maxQueued+10)))
		if len(in.queue) != maxQueued || in.poisonErr != errTooPipelined {
			t.Fatalf("queue %d poison %v", len(in.queue), in.poisonErr)
		}
	})
}

func TestVerdictMatches(t *testing.T) {
	long := strings.Repeat("m", maxStoredLine+5)
	tests := []struct {
		line        string
		lineLen     int
		method, uri string
		want        bool
	}{
		{"GET /", 5, "GET", "/", true},
		{"GET /", 5, "GET", "/x", false},
		{"GET /", 5, "PUT", "/", false},
		{"GET /", 5, "GE", "T /", false},
		{long[:maxStoredLine], len(long) + 2, long, "/", true},
		{long[:maxStoredLine], len(long) + 2, long[:len(long)-1] + "n", "/", true}, // beyond what is kept
		{long[:maxStoredLine], len(long) + 2, long, "/x", false},
	}
	for _, tt := range tests {
		v := verdict{line: tt.line, lineLen: tt.lineLen}
		if got := v.matches(tt.method, tt.uri); got != tt.want {
			t.Errorf("matches(%.10q, %q) on %.10q = %v, want %v", tt.method, tt.uri, tt.line, got, tt.want)
		}
	}
}

func TestInspectConnCloseWrite(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := InspectConn(a).(closeWriter); ok {
		t.Error("CloseWrite exposed over net.Pipe")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := InspectListener(ln).Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(closeWriter); !ok {
		t.Errorf("%T hides CloseWrite", c)
	}
	if ConnContext(t.Context(), c).Value(inspectorKey{}) == nil {
		t.Error("ConnContext did not attach the inspector")
	}
	if ConnContext(t.Context(), a).Value(inspectorKey{}) != nil {
		t.Error("ConnContext attached an inspector to a plain conn")
	}
}

// goRequests parses stream the way net/http's server does and returns, for
// each request it accepts with a readable body, its method, target and the
// offset of its first byte.
func goRequests(stream []byte) (reqs []goReq) {
	cr := &countingReader{r: bytes.NewReader(stream)}
	br := bufio.NewReaderSize(cr, 4096)
	lastPOST := false
	for {
		if lastPOST {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		start := cr.n - int64(br.Buffered())
		req, err := http.ReadRequest(br)
		if err != nil {
			return reqs
		}
		reqs = append(reqs, goReq{req.Method, req.RequestURI, start})
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return reqs
		}
		lastPOST = req.Method == "POST"
	}
}

type goReq struct {
	method, uri string
	offset      int64
}

func (r goReq) String() string { return fmt.Sprintf("%s %s @%d", r.method, r.uri, r.offset) }

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestInspectorAgreesWithNetHTTP checks, on the valid pipeline, that every
// request net/http parses is matched to the head at the same offset.
func TestInspectorAgreesWithNetHTTP(t *testing.T) {
	stream := []byte(validPipeline)
	reqs := goRequests(stream)
	if len(reqs) != 6 {
		t.Fatalf("net/http parsed %v", reqs)
	}
	in := &inspector{}
	in.scan(stream)
	for _, r := range reqs {
		off, err := in.checkAt(r.method, r.uri)
		if err != nil || off != r.offset {
			t.Fatalf("%v: inspector offset %d, err %v", r, off, err)
		}
	}
}

// genStream builds a pipeline of HTTP/1 requests from a grammar biased
// towards the ambiguities that matter for framing: CL/TE spellings and
// whitespace, versions, obs-fold, line endings, chunk sizes that are right
// or off by one, extensions, trailers and CR/LF between requests.
func genStream(rng *rand.Rand) []byte {
	pick := func(opts ...string) string { return opts[rng.IntN(len(opts))] }
	maybe := func(p float64, s string) string {
		if rng.Float64() < p {
			return s
		}
		return ""
	}
	eol := func() string {
		if rng.IntN(30) == 0 {
			return pick("\n", "\r\r\n", "\r")
		}
		return "\r\n"
	}
	var b strings.Builder
	for range 1 + rng.IntN(4) {
		method := pick("GET", "POST", "POST", "PUT", "OPTIONS", "X-Y")
		target := pick("/", "/a?b=c", "*", "http://h/x")
		if method == "OPTIONS" && rng.IntN(2) == 0 {
			target = "*"
		}
		b.WriteString(method + pick(" ", " ", " ", "  ") + target + " " +
			pick("HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0") + eol())
		b.WriteString(maybe(0.9, "Host: h"+eol()))
		framing := ""
		for range rng.IntN(4) {
			name := ""
			value := ""
			switch rng.IntN(5) {
			case 0:
				name = pick("Content-Length", "Content-Length", "Content-Length", "content-length", "CONTENT-LENGTH", "Content_Length", "Content-Length ")
				value = pick("3", "3", "3", "3", " 3 ", "03", "0", "3, 3", "", "-1", "+3", "3\t", "99999999999999999999")
				if framing == "" {
					framing = "cl"
				}
			case 2:
				name = pick("Transfer-Encoding", "Transfer-Encoding", "Transfer-Encoding", "transfer-encoding", "Transfer-Encoding ", "Transfer_Encoding")
				value = pick("chunked", "chunked", "chunked", "chunked", "Chunked", " chunked", "chunked ", "gzip, chunked", "chunked, gzip", "\x0bchunked", "identity")
				framing = "te"
			default:
				name = pick("X-A", "X-B", "Accept", "Connection", "Trailer")
				value = pick("1", "close", "keep-alive", "X-A", "100-continue")
			}
			b.WriteString(name + ":" + value + eol())
			b.WriteString(maybe(0.05, pick(" folded", "\tTransfer-Encoding: chunked")+eol()))
		}
		b.WriteString(eol())
		switch framing {
		case "cl":
			b.WriteString(pick("abc", "ab", "abcd", ""))
		case "te":
			for range rng.IntN(3) {
				data := strings.Repeat("z", rng.IntN(20))
				size := max(0, len(data)+[]int{0, 0, 0, 1, -1}[rng.IntN(5)])
				b.WriteString(fmt.Sprintf("%x", size) + maybe(0.2, pick(";e", ";e=\"v\"", " ")) + eol() + data + eol())
			}
			b.WriteString(pick("0", "000", "0;x") + eol())
			b.WriteString(maybe(0.3, pick("X-T: 1", "X-T:", " X-T: 1", "X T: 1")+eol()))
			b.WriteString(eol())
		}
		b.WriteString(maybe(0.2, pick("\r\n", "\n", "\r\n\r\n", "\r\n\r\n\r\n")))
	}
	return []byte(b.String())
}

// TestInspectorDifferential runs the FuzzInspector property on many
// generated pipelines: every request the inspector lets through starts
// where net/http says it starts.
func TestInspectorDifferential(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	accepted, refused := 0, 0
	for i := range 20000 {
		stream := genStream(rng)
		in := &inspector{}
		at := rng.IntN(len(stream) + 1)
		in.scan(stream[:at])
		in.scan(stream[at:])
		for _, r := range goRequests(stream) {
			off, err := in.checkAt(r.method, r.uri)
			if err != nil {
				refused++
				break
			}
			accepted++
			if off != r.offset {
				t.Fatalf("stream %d %q: inspector accepted %v at offset %d", i, stream, r, off)
			}
		}
	}
	t.Logf("%d requests accepted, %d pipelines cut short by a refusal", accepted, refused)
	if accepted < 5000 || refused < 1000 {
		t.Fatalf("generator is lopsided: %d accepted, %d refused", accepted, refused)
	}
}
