package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// httpTarget drives http1 and h2c through a fixed set of connections made
// with http.Transport.NewClientConn, so the number of connections is
// exactly Config.Connections. HTTP/1.1 connections carry one request at a
// time and are checked out from a pool; HTTP/2 connections are shared
// round-robin by the workers and multiplex their streams.
type httpTarget struct {
	url     string
	addr    string
	method  string
	payload []byte
	tr      *http.Transport
	h2      bool
	slots   []*connSlot
	free    chan *connSlot // http1: idle connections
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
	t := &httpTarget{url: u.String(), addr: addr, method: http.MethodGet, h2: cfg.Proto == ProtoH2C}
	if cfg.Payload > 0 {
		t.method = http.MethodPost
		t.payload = bytes.Repeat([]byte("x"), cfg.Payload)
	}
	var p http.Protocols
	if t.h2 {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
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
	if !t.h2 {
		t.free = make(chan *connSlot, len(t.slots))
		for _, s := range t.slots {
			t.free <- s
		}
	}
	t.buf.New = func() any { b := make([]byte, 32<<10); return &b }
	return t, nil
}

// conn returns the slot's connection, dialing a new one if it has none or
// its connection failed.
func (t *httpTarget) conn(ctx context.Context, s *connSlot) (*http.ClientConn, error) {
	if cc := s.cc.Load(); cc != nil && cc.Err() == nil {
		return cc, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cc := s.cc.Load()
	if cc != nil && cc.Err() == nil {
		return cc, nil
	}
	if cc != nil {
		cc.Close()
		s.cc.Store(nil)
	}
	cc, err := t.tr.NewClientConn(ctx, "http", t.addr)
	if err != nil {
		return nil, err
	}
	s.cc.Store(cc)
	return cc, nil
}

func (t *httpTarget) preconnect(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range t.slots {
		wg.Go(func() { t.conn(ctx, s) })
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
	var slot *connSlot
	if t.h2 {
		slot = t.slots[r.worker%len(t.slots)]
	} else {
		// Wait for an idle HTTP/1.1 connection; in the open loop the wait
		// counts in the latency.
		select {
		case slot = <-t.free:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		defer func() { t.free <- slot }()
	}
	cc, err := t.conn(ctx, slot)
	if err != nil {
		return 0, err
	}
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
		return 0, err
	}
	bp := t.buf.Get().(*[]byte)
	n, err := io.CopyBuffer(io.Discard, resp.Body, *bp)
	t.buf.Put(bp)
	resp.Body.Close()
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
