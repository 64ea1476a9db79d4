package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// httpTarget drives h2c through a fixed set of connections made with
// http.Transport.NewClientConn, so the number of connections is exactly
// Config.Connections. The connections are shared round-robin by the
// workers and multiplex their streams. (http1 has its own lean client,
// http1Target.)
type httpTarget struct {
	url     string
	addr    string
	method  string
	payload []byte
	tr      *http.Transport
	slots   []*connSlot
	buf     sync.Pool
}

type connSlot struct {
	mu sync.Mutex
	cc atomic.Pointer[http.ClientConn]
}

// parseHTTPTarget parses an http1/h2c target and returns its URL and the
// host:port to dial.
func parseHTTPTarget(target string) (*url.URL, string, error) {
	raw := target
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("--target %q: %v", target, err)
	}
	if u.Scheme != "http" {
		return nil, "", fmt.Errorf("--target %q: scheme must be http (TLS is the sidecars' business)", target)
	}
	if u.Host == "" {
		return nil, "", fmt.Errorf("--target %q: no host", target)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, addr, nil
}

func newHTTPTarget(cfg Config) (*httpTarget, error) {
	u, addr, err := parseHTTPTarget(cfg.Target)
	if err != nil {
		return nil, err
	}
	t := &httpTarget{url: u.String(), addr: addr, method: http.MethodGet}
	if cfg.Payload > 0 {
		t.method = http.MethodPost
		t.payload = bytes.Repeat([]byte("x"), cfg.Payload)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	t.tr = &http.Transport{
		Protocols:          &p,
		Proxy:              nil,
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	t.slots = make([]*connSlot, cfg.Connections)
	for i := range t.slots {
		t.slots[i] = &connSlot{}
	}
	t.buf.New = func() any { b := make([]byte, 32<<10); return &b }
	return t, nil
}

// conn returns the slot's connection, dialing a new one if it has none or
// its connection failed. fresh reports whether this call dialed it.
func (t *httpTarget) conn(ctx context.Context, s *connSlot) (cc *http.ClientConn, fresh bool, err error) {
	if cc := s.cc.Load(); cc != nil && cc.Err() == nil {
		return cc, false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cc = s.cc.Load()
	if cc != nil && cc.Err() == nil {
		return cc, false, nil
	}
	if cc != nil {
		cc.Close()
		s.cc.Store(nil)
	}
	cc, err = t.tr.NewClientConn(ctx, "http", t.addr)
	if err != nil {
		return nil, false, err
	}
	s.cc.Store(cc)
	return cc, true, nil
}

// drop closes cc and takes it out of the slot, unless another request
// has already replaced it, so that the slot's next request dials.
func (t *httpTarget) drop(s *connSlot, cc *http.ClientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cc.Load() == cc {
		s.cc.Store(nil)
	}
	cc.Close()
}

func (t *httpTarget) preconnect(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range t.slots {
		wg.Go(func() { t.conn(ctx, s) }) // a failure shows in the first request
	}
	wg.Wait()
}

func (t *httpTarget) requester(worker int) requester {
	return &httpRequester{t: t, worker: worker}
}

func (t *httpTarget) close() {
	for _, s := range t.slots {
		s.mu.Lock()
		if cc := s.cc.Swap(nil); cc != nil {
			cc.Close()
		}
		s.mu.Unlock()
	}
	t.tr.CloseIdleConnections()
}

type httpRequester struct {
	t      *httpTarget
	worker int
}

func (r *httpRequester) close() {}

func (r *httpRequester) do(ctx context.Context) (int64, error) {
	t := r.t
	slot := t.slots[r.worker%len(t.slots)]
	// A server may close a connection between two requests (an idle
	// timeout, a GOAWAY); net/http notices only when the next request is
	// sent on it. Like http.Transport does for its pooled connections, a
	// request that fails that way on a connection that had already carried
	// one is sent once more on a new connection; its latency includes both
	// tries. A failure on a new connection is the request's own.
	for attempt := 0; ; attempt++ {
		cc, fresh, err := t.conn(ctx, slot)
		if err != nil {
			return 0, err
		}
		n, err := t.roundTrip(ctx, slot, cc)
		if err != nil && !fresh && attempt == 0 && errors.Is(err, errConnLost) && ctx.Err() == nil {
			continue
		}
		return n, err
	}
}

// errConnLost marks a round trip that failed before any of the response
// arrived because the connection was gone.
var errConnLost = errors.New("connection lost before the response")

// roundTrip sends one request on cc and reads the whole response.
func (t *httpTarget) roundTrip(ctx context.Context, slot *connSlot, cc *http.ClientConn) (int64, error) {
	var body io.Reader
	if t.payload != nil {
		body = bytes.NewReader(t.payload)
	}
	// The request gets a context that is cancelled only if ctx ends while
	// the request is in flight. The engine cancels ctx right after every
	// request; had the request carried ctx itself, that cancellation could
	// race net/http's bookkeeping of the finished response and close the
	// keep-alive connection under the next request (which then fails with
	// "persistConn.readLoop exiting").
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, hcancel)
	defer stop()
	req, err := http.NewRequestWithContext(hctx, t.method, t.url, body)
	if err != nil {
		return 0, err
	}
	if t.payload != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		if cc.Err() != nil || classify(ctx, err) == ErrReset {
			// The connection is unusable: the next request dials.
			t.drop(slot, cc)
			return 0, fmt.Errorf("%w: %w", errConnLost, err)
		}
		return 0, err
	}
	bp := t.buf.Get().(*[]byte)
	n, err := io.CopyBuffer(io.Discard, resp.Body, *bp)
	t.buf.Put(bp)
	resp.Body.Close()
	if resp.Close {
		// The server said it closes the connection after this response
		// (Connection: close, or HTTP/1.0 without keep-alive). net/http
		// marks the connection unusable only a moment later; dropping it
		// now makes the next request dial instead of racing that.
		t.drop(slot, cc)
	}
	if err != nil {
		return n, err
	}
	if resp.StatusCode >= 300 {
		return n, httpStatusError{resp.StatusCode}
	}
	if t.payload != nil && n != int64(len(t.payload)) {
		return n, badResponseError{fmt.Sprintf("echoed %d bytes of %d", n, len(t.payload))}
	}
	return n, nil
}
