package detect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProtocolString(t *testing.T) {
	tests := []struct {
		p    Protocol
		want string
	}{
		{Opaque, "opaque"},
		{HTTP1, "http/1"},
		{HTTP2, "http/2"},
		{Protocol(7), "Protocol(7)"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("Protocol(%d).String() = %q, want %q", int(tt.p), got, tt.want)
		}
	}
}

var tlsClientHello = []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}

func TestDetect(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Protocol
		// decidedAt is the number of bytes Detect must have consumed when
		// fed one byte per read: it proves the decision is taken as soon as
		// possible. 0 means "the whole input".
		decidedAt int
	}{
		{"get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, len("GET / HTTP/1.1\r\n")},
		{"post http/1.0", "POST /api?x=1 HTTP/1.0\r\nContent-Length: 0\r\n\r\n", HTTP1, len("POST /api?x=1 HTTP/1.0\r\n")},
		{"extension method", "PROPFIND /dav HTTP/1.1\r\n", HTTP1, 0},
		{"any token method", "M-SEARCH * HTTP/1.1\r\n", HTTP1, 0},
		{"asterisk form", "OPTIONS * HTTP/1.1\r\n", HTTP1, 0},
		{"absolute form", "GET http://example.com:8080/x HTTP/1.1\r\n", HTTP1, 0},
		{"authority form", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", HTTP1, len("CONNECT example.com:443 HTTP/1.1\r\n")},
		{"obs-text target", "GET /caf\xc3\xa9 HTTP/1.1\r\n", HTTP1, 0},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", HTTP1, len("GET / HTTP/1.1\n")},
		{"PRI as a method", "PRI * HTTP/1.1\r\n", HTTP1, 0},
		{"h2 preface", preface, HTTP2, 0},
		{"h2 preface and settings", preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2, len(preface)},

		{"empty", "", Opaque, 0},
		{"tls client hello", string(tlsClientHello), Opaque, 1},
		{"nul", "\x00\x00\x00\x08\x04\xd2\x16\x2f", Opaque, 1}, // postgres SSLRequest
		{"redis inline", "PING\r\n", Opaque, len("PING\r")},
		{"ssh banner", "SSH-2.0-OpenSSH_9.6\r\n", Opaque, len("SSH-2.0-OpenSSH_9.6\r")},
		{"memcached", "get foo\r\n", Opaque, len("get foo\r")},
		{"http/2.0 request line", "GET / HTTP/2.0\r\n", Opaque, len("GET / HTTP/2")},
		{"http/1.2", "GET / HTTP/1.2\r\n", Opaque, len("GET / HTTP/1.2")},
		{"lowercase version", "GET / http/1.1\r\n", Opaque, len("GET / h")},
		{"double space", "GET  / HTTP/1.1\r\n", Opaque, len("GET  ")},
		{"leading CRLF", "\r\nGET / HTTP/1.1\r\n", Opaque, 1},
		{"leading space", " GET / HTTP/1.1\r\n", Opaque, 1},
		{"trailing space", "GET / HTTP/1.1 \r\n", Opaque, len("GET / HTTP/1.1 ")},
		{"CR CR", "GET / HTTP/1.1\r\r\n", Opaque, len("GET / HTTP/1.1\r\r")},
		{"DEL in target", "GET /\x7f HTTP/1.1\r\n", Opaque, len("GET /\x7f")},
		{"tab separator", "GET\t/ HTTP/1.1\r\n", Opaque, len("GET\t")},
		{"no target", "GET HTTP/1.1\r\n", Opaque, len("GET HTTP/1.1\r")},
		{"truncated request line", "GET / HTTP/1.1", Opaque, 0},
		{"truncated preface", preface[:20], Opaque, 0},
		{"preface diverges", preface[:18] + "XX", Opaque, 19},
		{"preface wrong version line", "PRI * HTTP/2.1\r\n", Opaque, len("PRI * HTTP/2.1")},
		{"binary", "\xff\xfe\xfd", Opaque, 1},
	}
	chunkings := [][]int{nil, {1}, {2}, {3, 0, 5}, {7, 1}, {4096}}
	for _, tt := range tests {
		for _, chunks := range chunkings {
			t.Run(fmt.Sprintf("%s/chunks=%v", tt.name, chunks), func(t *testing.T) {
				fc := newChunkConn([]byte(tt.input), chunks...)
				got, conn, err := Detect(fc, Config{})
				if err != nil {
					t.Fatalf("Detect: %v", err)
				}
				if got != tt.want {
					t.Fatalf("Detect(%q) = %v, want %v", tt.input, got, tt.want)
				}
				if len(chunks) == 1 && chunks[0] == 1 {
					want := tt.decidedAt
					if want == 0 {
						want = len(tt.input)
					}
					if c := fc.consumed(); c != want {
						t.Errorf("consumed %d bytes before deciding, want %d", c, want)
					}
				}
				checkDeadlines(t, fc)
				if tt.input == "" && conn != net.Conn(fc) {
					t.Errorf("nothing consumed: want the original conn back, got %T", conn)
				}
				replay, err := io.ReadAll(conn)
				if err != nil {
					t.Fatalf("reading replay conn: %v", err)
				}
				if string(replay) != tt.input {
					t.Fatalf("replay = %q, want %q", replay, tt.input)
				}
			})
		}
	}
}

// checkDeadlines asserts that Detect set exactly one read deadline and then
// cleared it.
func checkDeadlines(t *testing.T, fc *chunkConn) {
	t.Helper()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.deadlines) != 2 || fc.deadlines[0].IsZero() || !fc.deadlines[1].IsZero() {
		t.Errorf("read deadlines = %v, want [non-zero, zero]", fc.deadlines)
	}
}

func TestDetectMaxBytes(t *testing.T) {
	longLine := "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\n"
	fitting := "GET /" + strings.Repeat("a", 4096-len("GET / HTTP/1.1\r\n")) + " HTTP/1.1\r\n"
	tests := []struct {
		name     string
		input    string
		maxBytes int
		want     Protocol
		consumed int
	}{
		{"request line longer than default", longLine, 0, Opaque, DefaultMaxBytes},
		{"request line exactly default", fitting + "Host: a\r\n\r\n", 0, HTTP1, DefaultMaxBytes},
		{"request line one byte too long", "GET /a" + fitting[len("GET /"):], 0, Opaque, DefaultMaxBytes},
		{"small limit", "GET /abcdef HTTP/1.1\r\n", 8, Opaque, 8},
		{"preface needs 24 bytes", preface, 23, Opaque, 23},
		{"preface fits", preface, 24, HTTP2, 24},
		{"large limit", longLine, 8192, HTTP1, len(longLine)},
	}
	for _, tt := range tests {
		for _, chunks := range [][]int{nil, {1}, {1000}} {
			t.Run(fmt.Sprintf("%s/chunks=%v", tt.name, chunks), func(t *testing.T) {
				fc := newChunkConn([]byte(tt.input), chunks...)
				got, conn, err := Detect(fc, Config{MaxBytes: tt.maxBytes})
				if err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
				if c := fc.consumed(); c != tt.consumed {
					t.Errorf("consumed %d bytes, want %d", c, tt.consumed)
				}
				replay, err := io.ReadAll(conn)
				if err != nil || string(replay) != tt.input {
					t.Fatalf("replay mismatch (err=%v): got %d bytes, want %d", err, len(replay), len(tt.input))
				}
			})
		}
	}
}

func TestDetectErrors(t *testing.T) {
	t.Run("read error", func(t *testing.T) {
		fc := newChunkConn([]byte("GET / HT"), 3)
		fc.endErr = errReset
		got, conn, err := Detect(fc, Config{})
		if !errors.Is(err, errReset) {
			t.Fatalf("err = %v, want %v", err, errReset)
		}
		if got != Opaque {
			t.Errorf("got %v, want opaque", got)
		}
		buf := make([]byte, 64)
		n, _ := conn.Read(buf)
		if string(buf[:n]) != "GET / HT" {
			t.Errorf("replay = %q", buf[:n])
		}
	})
	t.Run("deadline unsupported", func(t *testing.T) {
		fc := newChunkConn([]byte("GET / HTTP/1.1\r\n"))
		fc.deadlineErr = errors.New("deadlines not supported")
		got, conn, err := Detect(fc, Config{})
		if err == nil || got != Opaque || conn != net.Conn(fc) {
			t.Fatalf("got (%v, %T, %v), want (opaque, original conn, error)", got, conn, err)
		}
		if fc.consumed() != 0 {
			t.Errorf("read %d bytes without a deadline", fc.consumed())
		}
	})
	t.Run("EOF in same read as decision", func(t *testing.T) {
		fc := &eofConn{chunkConn: newChunkConn([]byte("GET / HTTP/1.1\r\n\r\n"))}
		got, conn, err := Detect(fc, Config{})
		if err != nil || got != HTTP1 {
			t.Fatalf("got (%v, %v), want http/1", got, err)
		}
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if n != len(fc.data) || err != nil {
			t.Fatalf("first read = (%d, %v)", n, err)
		}
		if n, err := conn.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("second read = (%d, %v), want (0, EOF)", n, err)
		}
	})
	t.Run("no progress", func(t *testing.T) {
		got, _, err := Detect(zeroConn{newChunkConn([]byte("x"))}, Config{})
		if !errors.Is(err, io.ErrNoProgress) || got != Opaque {
			t.Fatalf("got (%v, %v), want (opaque, ErrNoProgress)", got, err)
		}
	})
}

// eofConn returns io.EOF together with the last bytes.
type eofConn struct{ *chunkConn }

func (c *eofConn) Read(p []byte) (int, error) {
	n, err := c.chunkConn.Read(p)
	if err == nil && c.consumed() == len(c.data) {
		err = io.EOF
	}
	return n, err
}

// zeroConn always returns (0, nil).
type zeroConn struct{ *chunkConn }

func (zeroConn) Read([]byte) (int, error) { return 0, nil }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { c.Close(); r.c.Close() })
	return c.(*net.TCPConn), r.c.(*net.TCPConn)
}

func TestDetectServerSpeaksFirst(t *testing.T) {
	client, server := tcpPair(t)
	const timeout = 50 * time.Millisecond
	start := time.Now()
	got, conn, err := Detect(server, Config{Timeout: timeout})
	elapsed := time.Since(start)
	if err != nil || got != Opaque {
		t.Fatalf("got (%v, %v), want (opaque, nil)", got, err)
	}
	if conn != net.Conn(server) {
		t.Errorf("nothing was read, want the original conn, got %T", conn)
	}
	if elapsed < timeout || elapsed > timeout+time.Second {
		t.Errorf("Detect took %v, want about %v", elapsed, timeout)
	}
	// The SMTP-style exchange proceeds, and the read deadline is gone: a
	// read that waits longer than the detection timeout must succeed.
	if _, err := conn.Write([]byte("220 mail.example ESMTP\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := client.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "220 ") {
		t.Fatalf("client read (%q, %v)", buf[:n], err)
	}
	go func() {
		time.Sleep(3 * timeout)
		client.Write([]byte("EHLO client\r\n"))
	}()
	n, err = conn.Read(buf)
	if err != nil || string(buf[:n]) != "EHLO client\r\n" {
		t.Fatalf("server read after detection = (%q, %v); deadline not cleared?", buf[:n], err)
	}
}

func TestDetectPartialThenSilence(t *testing.T) {
	client, server := tcpPair(t)
	if _, err := client.Write([]byte("GET / HT")); err != nil {
		t.Fatal(err)
	}
	got, conn, err := Detect(server, Config{Timeout: 50 * time.Millisecond})
	if err != nil || got != Opaque {
		t.Fatalf("got (%v, %v), want (opaque, nil)", got, err)
	}
	if _, err := client.Write([]byte("TP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	all, err := io.ReadAll(conn)
	if err != nil || string(all) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("replay = (%q, %v)", all, err)
	}
}

// A client trickling bytes cannot keep Detect waiting past Timeout.
func TestDetectTrickleBoundedByTimeout(t *testing.T) {
	client, server := tcpPair(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		msg := []byte("GET /" + strings.Repeat("a", 1000))
		for _, b := range msg {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := client.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	const timeout = 100 * time.Millisecond
	start := time.Now()
	got, _, err := Detect(server, Config{Timeout: timeout})
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil || got != Opaque {
		t.Fatalf("got (%v, %v), want (opaque, nil)", got, err)
	}
	if elapsed > timeout+500*time.Millisecond {
		t.Errorf("Detect took %v with Timeout %v", elapsed, timeout)
	}
}

// Non-HTTP traffic is classified on its first byte, not after the timeout.
func TestDetectOpaqueWithoutWaiting(t *testing.T) {
	client, server := tcpPair(t)
	if _, err := client.Write(tlsClientHello); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, conn, err := Detect(server, Config{Timeout: 10 * time.Second})
	if err != nil || got != Opaque {
		t.Fatalf("got (%v, %v), want (opaque, nil)", got, err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("Detect waited %v for a TLS ClientHello", elapsed)
	}
	buf := make([]byte, len(tlsClientHello))
	if _, err := io.ReadFull(conn, buf); err != nil || !bytes.Equal(buf, tlsClientHello) {
		t.Fatalf("replay = (%x, %v)", buf, err)
	}
}

func TestCloseWriteExposed(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		client, server := tcpPair(t)
		client.Write([]byte("GET / HTTP/1.1\r\n"))
		got, conn, err := Detect(server, Config{})
		if err != nil || got != HTTP1 {
			t.Fatalf("got (%v, %v)", got, err)
		}
		cw, ok := conn.(interface{ CloseWrite() error })
		if !ok {
			t.Fatalf("%T does not expose CloseWrite", conn)
		}
		conn.Write([]byte("bye"))
		if err := cw.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		all, err := io.ReadAll(client)
		if err != nil || string(all) != "bye" {
			t.Fatalf("client saw (%q, %v), want half-close after %q", all, err, "bye")
		}
	})
	t.Run("pipe", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go a.Write([]byte("\x16\x03"))
		_, conn, err := Detect(b, Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := conn.(interface{ CloseWrite() error }); ok {
			t.Fatalf("%T claims CloseWrite over a net.Pipe, which has none", conn)
		}
	})
}

func TestReplayCopy(t *testing.T) {
	client, server := tcpPair(t)
	client.Write([]byte("POST / HTTP/1.1\r\n"))
	_, conn, err := Detect(server, Config{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		client.Write([]byte("Content-Length: 0\r\n\r\n"))
		client.CloseWrite()
	}()
	var sink bytes.Buffer
	n, err := io.Copy(&sink, conn) // exercises WriteTo
	if err != nil || sink.String() != "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n" || n != int64(sink.Len()) {
		t.Fatalf("io.Copy = (%d, %v) %q", n, err, sink.String())
	}
	// ReadFrom delegates writes to the underlying connection.
	if _, err := io.Copy(conn, strings.NewReader("HTTP/1.1 204 No Content\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	resp, _ := io.ReadAll(client)
	if string(resp) != "HTTP/1.1 204 No Content\r\n\r\n" {
		t.Fatalf("client got %q", resp)
	}
}

func TestReplayConcurrentReads(t *testing.T) {
	input := []byte(strings.Repeat("GET / HTTP/1.1\r\n", 1) + strings.Repeat("x", 3000))
	fc := newChunkConn(input, 4096)
	_, conn, err := Detect(fc, Config{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 7)
			for {
				n, err := conn.Read(buf)
				mu.Lock()
				total += n
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if total != len(input) {
		t.Fatalf("read %d bytes in total, want %d", total, len(input))
	}
}

func BenchmarkDetectHTTP1(b *testing.B) {
	req := []byte("GET /api/v1/users/42 HTTP/1.1\r\nHost: users.default.svc\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	fc := newChunkConn(req)
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		fc.reset()
		p, _, err := Detect(fc, Config{})
		if err != nil || p != HTTP1 {
			b.Fatal(p, err)
		}
	}
}

func BenchmarkDetectHTTP2(b *testing.B) {
	fc := newChunkConn([]byte(preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	b.ReportAllocs()
	for b.Loop() {
		fc.reset()
		if p, _, err := Detect(fc, Config{}); err != nil || p != HTTP2 {
			b.Fatal(p, err)
		}
	}
}
