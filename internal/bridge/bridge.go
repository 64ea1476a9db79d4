// Package bridge forwards one HTTP request through an http.RoundTripper
// and streams the response back: the common core of the outbound
// (app → HTTP/3) and inbound (HTTP/3 → app) HTTP paths. Bodies stream in
// both directions at once, trailers and 1xx responses are carried, and
// nothing is buffered whole.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quicmesh/quicmesh/internal/httpx"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Options tune one forward.
type Options struct {
	// StripResponseMesh removes Quicmesh- headers from the response: set
	// where the response comes from an app, which must not be able to
	// forge proxy headers.
	StripResponseMesh bool
}

// Result describes a forwarded response for metrics.
type Result struct {
	Status     int
	GRPCStatus string // "" when the response carried none
}

// Failed reports whether the response counts as a failure: a 5xx, or a
// gRPC status other than OK.
func (r Result) Failed() bool {
	return r.Status >= 500 || (r.GRPCStatus != "" && r.GRPCStatus != "0")
}

// Forward sends out through rt and copies the response to w. out is
// the request w answers, prepared by PrepareOutgoing (it keeps the
// protocol version the request arrived with). It returns what was sent,
// or an error if no response header arrived (the caller then writes an
// error response with WriteError). A failure after the header was sent
// aborts the client's stream with http.ErrAbortHandler so a truncated
// body is never mistaken for a complete one.
func Forward(w http.ResponseWriter, out *http.Request, rt http.RoundTripper, opts Options) (Result, error) {
	rc := http.NewResponseController(w)
	if out.ProtoMajor == 1 {
		// Bidirectional streaming over HTTP/1.1 needs full duplex; h2
		// and h3 have it anyway. Asked of their writers, the call fails
		// with an error built by fmt.Errorf, which cost ~10 % of the
		// inbound sidecar's CPU per request (docs/benchmarks.md, "Where
		// a request's CPU goes").
		_ = rc.EnableFullDuplex()
	}

	info := &infoWriter{w: w}
	info.trace.Got1xxResponse = info.got1xx
	out = out.WithContext(httptrace.WithClientTrace(out.Context(), &info.trace))
	resp, err := rt.RoundTrip(out)
	if err != nil {
		return Result{}, err
	}
	defer resp.Body.Close()
	info.mu.Lock()
	defer info.mu.Unlock()

	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	httpx.RemoveHopByHop(h)
	if opts.StripResponseMesh {
		httpx.StripMeshHeaders(h)
	}
	for k := range resp.Trailer {
		h.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified || out.Method == http.MethodHead {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	} else if err := copyFlushing(w, rc, resp.Body, resp); err != nil {
		// Headers are gone; the only honest signal left is to abort.
		panic(http.ErrAbortHandler)
	}
	for k, vv := range resp.Trailer {
		if opts.StripResponseMesh && httpx.IsMeshHeader(k) {
			continue
		}
		h[trailerKey(k)] = vv
	}
	res := Result{Status: resp.StatusCode, GRPCStatus: resp.Header.Get("Grpc-Status")}
	if res.GRPCStatus == "" {
		res.GRPCStatus = resp.Trailer.Get("Grpc-Status")
	}
	return res, nil
}

// infoWriter passes 1xx responses other than 100 and 101 on to w while
// the round trip waits for the final response; the response itself is
// written under mu, so the two never interleave. One allocation holds
// the lock and the trace (they were three, on every request).
type infoWriter struct {
	mu    sync.Mutex
	w     http.ResponseWriter
	trace httptrace.ClientTrace
}

func (iw *infoWriter) got1xx(code int, header textproto.MIMEHeader) error {
	if code == http.StatusContinue || code == http.StatusSwitchingProtocols {
		return nil
	}
	iw.mu.Lock()
	defer iw.mu.Unlock()
	h := iw.w.Header()
	for k, vv := range header {
		h[k] = vv
	}
	iw.w.WriteHeader(code)
	for k := range header {
		h.Del(k)
	}
	return nil
}

// trailerKey is the key under which a ResponseWriter takes k as a trailer
// not announced in the header ("Trailer:" + k, which HTTP/2 and HTTP/3
// servers both read). gRPC's trailers always arrive that way; their keys
// are constants, so a gRPC response costs no allocation per trailer.
func trailerKey(k string) string {
	switch k {
	case "Grpc-Status":
		return http.TrailerPrefix + "Grpc-Status"
	case "Grpc-Message":
		return http.TrailerPrefix + "Grpc-Message"
	case "Grpc-Status-Details-Bin":
		return http.TrailerPrefix + "Grpc-Status-Details-Bin"
	}
	if key, ok := (*trailerKeys.Load())[k]; ok {
		return key
	}
	key := http.TrailerPrefix + k
	if len(k) <= maxCachedTrailerKeyLen {
		cacheTrailerKey(k, key)
	}
	return key
}

// trailerKeys holds the trailer keys built for other names: an app's own
// trailers (gRPC metadata; the echo app of the benchmarks sends five on
// every call) have the same names call after call, so each key is built
// once. The map is replaced, never changed, so a lookup takes no lock.
// At most maxCachedTrailerKeys names of at most maxCachedTrailerKeyLen
// bytes are kept: an app that sends ever new names costs an allocation
// per name, as before, and no memory.
var (
	trailerKeys   atomic.Pointer[map[string]string]
	trailerKeysMu sync.Mutex // serializes cacheTrailerKey
)

const (
	maxCachedTrailerKeys   = 64
	maxCachedTrailerKeyLen = 64
)

func init() { trailerKeys.Store(&map[string]string{}) }

func cacheTrailerKey(k, key string) {
	trailerKeysMu.Lock()
	defer trailerKeysMu.Unlock()
	old := *trailerKeys.Load()
	if _, ok := old[k]; ok || len(old) >= maxCachedTrailerKeys {
		return
	}
	m := make(map[string]string, len(old)+1)
	maps.Copy(m, old)
	m[k] = key
	trailerKeys.Store(&m)
}

// copyFlushing streams body to w, flushing after every read so streamed
// responses (gRPC, server-sent events) are not held back. Bytes that
// arrive with the end of the body are not flushed: the server sends
// them as the handler returns, which the caller does next, together
// with the end of the response (HTTP/3: the last DATA frame and the
// stream's FIN in one packet rather than two; HTTP/1.1: a small body of
// unknown length gets a Content-Length instead of chunks). net/http's
// client and quic-go's return io.EOF with the last bytes when the end
// has arrived with them. A response with trailers (resp.Trailer, filled
// by the client at the end of the body) is flushed as before: quic-go's
// HTTP/3 server gives a response not yet sent when the handler returns a
// Content-Length (responseWriter.Finish), and the trailers after it were
// lost between the sidecars (TestHTTP1ThroughMesh, "chunked request body
// and response trailers", over both transports).
func copyFlushing(w io.Writer, rc *http.ResponseController, body io.Reader, resp *http.Response) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if err != io.EOF || len(resp.Trailer) > 0 {
				if ferr := rc.Flush(); ferr != nil {
					return ferr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// PrepareOutgoing turns a server-side request into a client request for
// the next hop: hop-by-hop and mesh headers removed, the body and trailers
// streamed through, Host preserved.
func PrepareOutgoing(ctx context.Context, r *http.Request, scheme, host string) *http.Request {
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.URL.Scheme = scheme
	out.URL.Host = host
	out.Host = r.Host
	out.Body = r.Body
	// A nil body (not http.NoBody) tells the HTTP/3 client there is none:
	// it would otherwise start a goroutine and a 100 KiB copy buffer per
	// request to send nothing.
	if r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0) {
		out.Body = nil
	}
	// Trailers arrive only after the body, and some servers (HTTP/3)
	// replace r.Trailer rather than fill it: copy them over at body EOF,
	// which is before the client sends its trailers.
	if len(r.Trailer) > 0 && out.Body != nil {
		out.Trailer = make(http.Header, len(r.Trailer))
		for k := range r.Trailer {
			out.Trailer[k] = nil
		}
		out.Body = &trailerCopier{ReadCloser: r.Body, src: r, dst: out.Trailer}
	} else {
		out.Trailer = nil
	}
	httpx.RemoveHopByHop(out.Header)
	httpx.StripMeshHeaders(out.Header)
	httpx.KeepUserAgentAbsent(out.Header)
	// 100-continue was answered by the server that received the request;
	// the next hop gets the body right away.
	out.Header.Del("Expect")
	out.Close = false
	return out
}

// IsGRPC reports whether r is a gRPC request.
func IsGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

// GRPCTimeout parses the grpc-timeout header (e.g. "100m", "5S").
func GRPCTimeout(r *http.Request) (time.Duration, bool) {
	v := r.Header.Get("Grpc-Timeout")
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// ErrorKind classifies proxy failures for the client.
type ErrorKind int

const (
	// Unavailable: unknown service, no endpoints, overloaded → 503 / UNAVAILABLE.
	Unavailable ErrorKind = iota
	// BadGateway: peer or app unreachable, reset → 502 / UNAVAILABLE.
	BadGateway
	// Timeout → 504 / DEADLINE_EXCEEDED.
	Timeout
	// Forbidden: the caller is not authorized for the service → 403 /
	// PERMISSION_DENIED.
	Forbidden
)

// DeadlinePassed reports whether ctx's deadline, if it has one, has been
// reached, even if ctx is not canceled yet: a failure caused by that
// deadline (the app or the peer enforcing the same grpc-timeout, and
// resetting the stream) can arrive before the local timer has fired,
// which on a loaded machine it did, turning DEADLINE_EXCEEDED into
// UNAVAILABLE.
func DeadlinePassed(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// Classify maps an error from a forward attempt to an ErrorKind.
func Classify(err error) ErrorKind {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case isTimeout(err):
		return Timeout
	default:
		return BadGateway
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// WriteError answers r with a proxy error: an HTTP status for HTTP
// clients, a trailers-only gRPC status for gRPC clients. who names the
// proxy that failed and reason says why; both go into the
// Quicmesh-Proxy-Error header.
func WriteError(w http.ResponseWriter, r *http.Request, kind ErrorKind, who, reason string) Result {
	h := w.Header()
	msg := who + ": " + reason
	h.Set(httpx.HeaderProxyError, sanitize(msg))
	if IsGRPC(r) {
		code := "14" // UNAVAILABLE
		switch kind {
		case Timeout:
			code = "4" // DEADLINE_EXCEEDED
		case Forbidden:
			code = "7" // PERMISSION_DENIED
		}
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", code)
		h.Set("Grpc-Message", grpcEscape(msg))
		w.WriteHeader(http.StatusOK)
		return Result{Status: http.StatusOK, GRPCStatus: code}
	}
	status := http.StatusBadGateway
	switch kind {
	case Unavailable:
		status = http.StatusServiceUnavailable
	case Timeout:
		status = http.StatusGatewayTimeout
	case Forbidden:
		status = http.StatusForbidden
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
	return Result{Status: status}
}

// Proto names the protocol of a request for metrics labels.
func Proto(r *http.Request) string {
	switch {
	case IsGRPC(r):
		return "grpc"
	case r.ProtoMajor == 3:
		return "h3"
	case r.ProtoMajor == 2:
		return "h2"
	default:
		return "http1"
	}
}

// Class is the metrics classification of a result.
func Class(r Result) string {
	if r.Failed() {
		return "failure"
	}
	return "success"
}

// sanitize keeps a header value to printable ASCII and a sane length.
func sanitize(s string) string {
	if len(s) > 512 {
		s = s[:512]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = ' '
		}
	}
	return string(b)
}

// grpcEscape percent-encodes a grpc-message per the gRPC HTTP/2 spec.
func grpcEscape(s string) string {
	s = sanitize(s)
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&sb, "%%%02X", c)
		} else {
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// trailerCopier copies the request trailers into the outgoing request when
// the body ends.
type trailerCopier struct {
	io.ReadCloser
	src  *http.Request
	dst  http.Header
	done bool
}

func (t *trailerCopier) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err == io.EOF && !t.done {
		t.done = true
		for k, vv := range t.src.Trailer {
			if httpx.IsHopByHop(k) || httpx.IsMeshHeader(k) {
				continue
			}
			t.dst[k] = vv
		}
	}
	return n, err
}
