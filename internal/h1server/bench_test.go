package h1server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/quicmesh/quicmesh/internal/httpx"
)

// benchHandler answers as bridge.Forward does for a small response:
// full duplex asked for, fields copied, status, one write, no flush.
var benchHandler = httpx.Guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_ = http.NewResponseController(w).EnableFullDuplex()
	h := w.Header()
	h["Content-Type"] = []string{"text/plain"}
	h["Echo-Host"] = []string{r.Host}
	w.WriteHeader(http.StatusOK)
	w.Write([]byte("hello, world\n"))
}))

// BenchmarkServe: one keep-alive connection on loopback, one GET at a
// time (a ~90-byte head, as Go's client sends), through httpx.Guard.
// "lean" is this server; "net/http" is the path it replaces: http.Server
// over httpx.InspectConn. allocs/op are the server's and the client's
// (the client side is the same in both).
func BenchmarkServe(b *testing.B) {
	b.Run("lean", func(b *testing.B) {
		benchServe(b, func(c net.Conn) {
			s := New(Config{Handler: benchHandler, Fallback: func(c net.Conn) { c.Close() }})
			s.ServeConn(c)
		})
	})
	b.Run("net/http", func(b *testing.B) {
		benchServe(b, func(c net.Conn) {
			ln := httpx.NewConnListener()
			closed := make(chan struct{})
			srv := &http.Server{Handler: benchHandler, ConnContext: httpx.ConnContext,
				ConnState: func(_ net.Conn, st http.ConnState) {
					if st == http.StateClosed {
						close(closed)
					}
				}}
			done := make(chan struct{})
			go func() { defer close(done); srv.Serve(ln) }()
			ln.Push(httpx.InspectConn(c))
			<-closed
			srv.Close()
			<-done
		})
	})
}

func benchServe(b *testing.B, serve func(net.Conn)) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		serve(c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	req := []byte("GET /bench?size=13 HTTP/1.1\r\nHost: web:8080\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
	br := bufio.NewReader(c)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != 200 {
			b.Fatal(resp.StatusCode, err)
		}
	}
	b.StopTimer()
	c.Close()
	<-served
}
