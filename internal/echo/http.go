package echo

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Header names used by [Handler].
const (
	// HeaderProto carries the request's protocol as the server saw it,
	// e.g. "HTTP/1.1" or "HTTP/2.0".
	HeaderProto = "Echo-Proto"
	// HeaderHost carries r.Host.
	HeaderHost = "Echo-Host"
	// HeaderMethod carries the request method.
	HeaderMethod = "Echo-Method"
	// HeaderLocalAddr carries the server's end of the connection the
	// request came on: which address and port the app was reached at.
	HeaderLocalAddr = "Echo-Local-Addr"
	// HeaderPeerIdentity carries every value of the request header
	// [RequestPeerIdentity], so tests can see which identity reached the app.
	// It is absent when the request had no such header.
	HeaderPeerIdentity = "Echo-Peer-Identity"
	// RequestPeerIdentity is the header a quicmesh sidecar adds with the
	// verified identity of the calling workload.
	RequestPeerIdentity = "Quicmesh-Peer-Identity"
	// TrailerDone is sent as a trailer with value "done" when the request
	// has the query parameter trailer=1.
	TrailerDone = "Echo-Trailer"
	// TrailerBytes is sent as a trailer (with trailer=1) carrying the
	// number of body bytes the server wrote.
	TrailerBytes = "Echo-Bytes"
)

// MaxSize bounds the ?size= query parameter.
const MaxSize = 1 << 30

// pattern is the deterministic content of GET bodies with ?size=N:
// byte i of the body is pattern[i%len(pattern)].
var pattern = func() []byte {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_" // 64 bytes
	b := make([]byte, 32<<10)
	for i := range b {
		b[i] = alphabet[i%len(alphabet)]
	}
	return b
}()

// Body returns the body that a GET with ?size=n returns; tests can compare
// against it.
func Body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = pattern[i%64]
	}
	return b
}

// Handler returns the echo HTTP handler used by the HTTP/1.1 and h2c
// servers. For any path:
//
//   - every response carries Echo-Proto (r.Proto), Echo-Host (r.Host),
//     Echo-Method, and Echo-Peer-Identity with the values of the request's
//     Quicmesh-Peer-Identity header, if it had one;
//   - POST and PUT echo the request body back as it streams in (the body is
//     never buffered whole), with the request's Content-Type;
//   - every other method returns "ok\n", or with ?size=N N bytes of
//     [Body](N), with a Content-Length;
//   - ?trailer=1 adds the trailers Echo-Trailer: done and Echo-Bytes: <n>;
//   - ?status=CODE answers with that status code (the body is still sent);
//   - ?sleep=DURATION (Go syntax, e.g. 50ms) waits first, giving up with
//     no response if the request's context ends.
func Handler() http.Handler {
	return http.HandlerFunc(serveEcho)
}

func serveEcho(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	status := http.StatusOK
	if s := q.Get("status"); s != "" {
		c, err := strconv.Atoi(s)
		if err != nil || c < 200 || c > 999 {
			http.Error(w, "echo: bad status parameter", http.StatusBadRequest)
			return
		}
		status = c
	}
	size := -1
	if s := q.Get("size"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > MaxSize {
			http.Error(w, "echo: bad size parameter", http.StatusBadRequest)
			return
		}
		size = n
	}
	if s := q.Get("sleep"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			http.Error(w, "echo: bad sleep parameter", http.StatusBadRequest)
			return
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	trailer := q.Get("trailer") == "1" || q.Get("trailer") == "true"

	h := w.Header()
	h.Set(HeaderProto, r.Proto)
	h.Set(HeaderHost, r.Host)
	h.Set(HeaderMethod, r.Method)
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		h.Set(HeaderLocalAddr, a.String())
	}
	for _, v := range r.Header.Values(RequestPeerIdentity) {
		h.Add(HeaderPeerIdentity, v)
	}
	if trailer {
		h.Set("Trailer", TrailerDone+", "+TrailerBytes)
	}

	var n int64
	switch r.Method {
	case http.MethodPost, http.MethodPut:
		if ct := r.Header.Get("Content-Type"); ct != "" {
			h.Set("Content-Type", ct)
		}
		// Reading the body while writing the response needs full duplex on
		// HTTP/1.x; HTTP/2 always is (and reports ErrNotSupported).
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(status)
		n, _ = copyFlush(w, r.Body)
	default:
		var body []byte
		if size < 0 {
			body = []byte("ok\n")
			size = len(body)
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		if !trailer {
			// With trailers HTTP/1.1 needs chunked encoding.
			h.Set("Content-Length", strconv.Itoa(size))
		}
		w.WriteHeader(status)
		if r.Method == http.MethodHead {
			break
		}
		if body != nil {
			m, _ := w.Write(body)
			n = int64(m)
			break
		}
		for rem := size; rem > 0; {
			c := min(rem, len(pattern))
			// pattern's length is a multiple of 64, so every chunk starts
			// at the right offset.
			m, err := w.Write(pattern[:c])
			n += int64(m)
			if err != nil {
				break
			}
			rem -= c
		}
	}
	if trailer {
		h.Set(TrailerDone, "done")
		h.Set(TrailerBytes, strconv.FormatInt(n, 10))
	}
}

// copyFlush copies src to w, flushing after every read so the echo streams.
func copyFlush(w http.ResponseWriter, src io.Reader) (int64, error) {
	f, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			k, werr := w.Write(buf[:m])
			n += int64(k)
			if werr != nil {
				return n, werr
			}
			if f != nil {
				f.Flush()
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// StartHTTP1 serves [Handler] over HTTP/1.1 only on ln.
func StartHTTP1(ln net.Listener) *Server {
	var p http.Protocols
	p.SetHTTP1(true)
	return startHTTP("http1", ln, p)
}

// StartH2C serves [Handler] over cleartext HTTP/2 with prior knowledge only
// (no HTTP/1.1, no Upgrade: h2c) on ln.
func StartH2C(ln net.Listener) *Server {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return startHTTP("h2c", ln, p)
}

// ListenHTTP1 listens on addr (e.g. "127.0.0.1:0") and calls [StartHTTP1].
func ListenHTTP1(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return StartHTTP1(ln), nil
}

// ListenH2C listens on addr and calls [StartH2C].
func ListenH2C(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return StartH2C(ln), nil
}

func startHTTP(kind string, ln net.Listener, p http.Protocols) *Server {
	tr := newTracker()
	inner := Handler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !tr.enter() {
				http.Error(w, "echo: closing", http.StatusServiceUnavailable)
				return
			}
			defer tr.exit()
			inner.ServeHTTP(w, r)
		}),
		Protocols:         &p,
		ReadHeaderTimeout: 30 * time.Second,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Serve returns ErrServerClosed after Close; any other error is a
		// dead listener, after which Close still works.
		_ = srv.Serve(ln)
	}()
	return newServer(kind, ln, func() { _ = srv.Close() }, func() {
		<-served
		tr.closeAndWait()
	})
}
