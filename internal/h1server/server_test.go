package h1server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// serveOne serves one connection with h and returns the client side.
func serveOne(t *testing.T, h http.Handler) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br, _ := serveCfg(t, Config{Handler: h})
	return c, br
}

// A body read by a goroutine the handler left behind fails once the
// handler has returned (as with net/http), and does not disturb the
// next request on the connection.
func TestBodyAfterHandlerReturns(t *testing.T) {
	testkit.CheckLeaks(t)
	late := make(chan error, 1)
	second := make(chan struct{}) // the next request has begun: the first's handler is long gone
	c, br := serveOne(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/first":
			b := make([]byte, 2)
			io.ReadFull(r.Body, b) // part of it
			go func() {
				<-second
				_, err := io.ReadAll(r.Body)
				late <- err
			}()
		case "/second":
			close(second)
		}
		io.WriteString(w, r.URL.Path)
	}))
	io.WriteString(c, "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"+
		"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
	for _, want := range []string{"/first", "/second"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		if string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if err := <-late; err == nil {
		t.Fatal("reading the body after the handler returned succeeded")
	}
}

// A handler that panics with http.ErrAbortHandler after sending part of
// a response closes the connection: the app sees a truncated body, not
// a complete one.
func TestAbortHandler(t *testing.T) {
	testkit.CheckLeaks(t)
	c, br := serveOne(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("an aborted response ended cleanly")
	}
}
