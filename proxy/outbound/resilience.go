package outbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The policy stages of the request path (chain.go, docs/design.md
// "Outbound resilience"): breaker, timeouts, retries. They sit inside
// errorResponses, which turns their refusals into proxy errors.

// policyError is a request the policy stopped: refused by the breaker,
// or out of time. It wraps the failure that was under way, if any.
type policyError struct {
	kind   bridge.ErrorKind
	reason string // bounded: the setting that stopped it
	text   string
	err    error
}

func (e *policyError) Error() string         { return e.text }
func (e *policyError) Unwrap() error         { return e.err }
func (e *policyError) FailureReason() string { return e.reason }

// breaker refuses a service's requests beyond its MaxPending with a 503
// at once, so a slow or failing service cannot pile up the proxy's
// goroutines and the app's connections. It also finds the request's
// policy for the stages below.
type breaker struct {
	policies *policies
	metrics  *telemetry.Metrics
	next     stage
}

func (b breaker) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	sp := b.policies.get(t.service)
	t.policy = sp
	if sp.MaxPending > 0 {
		if n := sp.pending.Add(1); n > int64(sp.MaxPending) {
			sp.pending.Add(-1)
			b.metrics.LoadShed(telemetry.Outbound, "max_pending")
			return outcome{err: &policyError{kind: bridge.Unavailable, reason: "max_pending",
				text: fmt.Sprintf("circuit breaker: service %q already has %d requests pending (max_pending %d)", t.service, n-1, sp.MaxPending)}}
		}
		defer sp.pending.Add(-1)
	}
	return b.next.serve(w, r, t)
}

// timeouts bounds a request by its service's Timeout (the whole
// exchange) and ResponseHeaderTimeout (until the response header), both
// covering its retries; either expiring is a 504.
type timeouts struct{ next stage }

func (tm timeouts) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	sp := t.policy
	if sp == nil || sp.Timeout == 0 && sp.ResponseHeaderTimeout == 0 {
		return tm.next.serve(w, r, t)
	}
	ctx := r.Context()
	parentDone := func() bool { return r.Context().Err() != nil }
	if sp.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sp.Timeout)
		defer cancel()
	}
	if sp.ResponseHeaderTimeout > 0 {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		timer := time.AfterFunc(sp.ResponseHeaderTimeout, func() { cancel(errHeaderTimeout) })
		defer timer.Stop()
		w = &headerWatch{ResponseWriter: w, timer: timer}
	}
	o := tm.next.serve(w, r.WithContext(ctx), t)
	if o.err == nil || parentDone() {
		return o
	}
	switch {
	case errors.Is(context.Cause(ctx), errHeaderTimeout):
		o.err = &policyError{kind: bridge.Timeout, reason: "response_header_timeout", err: o.err,
			text: fmt.Sprintf("no response header from service %q within %v (response_header_timeout): %v", t.service, sp.ResponseHeaderTimeout, o.err)}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		o.err = &policyError{kind: bridge.Timeout, reason: "timeout", err: o.err,
			text: fmt.Sprintf("request to service %q timed out after %v (timeout): %v", t.service, sp.Timeout, o.err)}
	}
	return o
}

// headerWatch stops timer when the final response header is written.
type headerWatch struct {
	http.ResponseWriter
	timer *time.Timer
}

func (h *headerWatch) WriteHeader(code int) {
	if code >= 200 {
		h.timer.Stop()
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerWatch) Write(p []byte) (int, error) {
	h.timer.Stop()
	return h.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (h *headerWatch) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// Retry reasons, the label of quicmesh_retries_total.
const (
	retryUnprocessed = "unprocessed" // the peer provably did not see the request
	retryConnDead    = "conn_dead"   // an idempotent request on a connection that died
	retryStatus      = "status"      // a RetryOn status, within the budget
)

// retries sends a request again, to another endpoint when there is one:
// always when the peer provably did not process it (refused stream,
// GOAWAY, closing connection, stateless reset) and its body can be
// replayed or the failed attempt read nothing of it (unreadBody);
// always when it is idempotent and its connection died under it (the
// peer may have seen it, which idempotence makes harmless); and
// on the service's RetryOn statuses (RetryOnGRPC codes in a gRPC
// Trailers-Only response) when it is idempotent and the retry budget
// allows. Failures to connect are retried on other endpoints by
// the connector already.
type retries struct {
	log     *slog.Logger
	metrics *telemetry.Metrics
	next    stage
}

func (rt retries) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	sp := t.policy
	if sp == nil {
		return rt.next.serve(w, r, t)
	}
	idempotent := isIdempotent(r) || bridge.IsGRPC(r) && sp.retryableGRPC(r.URL.Path)
	body, replayable, err := replayableBody(r, idempotent, sp.RetryBodyBytes)
	if err != nil {
		return outcome{err: err}
	}
	sp.budget.deposit()
	// A body that cannot be replayed can still go again, whole, when the
	// attempt failed unprocessed before reading any of it.
	var unread *unreadBody
	if !replayable && sp.MaxRetries > 0 {
		// Each attempt reads r.Body, a view of the body (no copy of r:
		// replayableBody leaves such a body in r too); r gets its body
		// back when the request is done.
		unread = &unreadBody{rc: r.Body}
		defer func() {
			r.Body = unread.rc
			unread.release()
		}()
	}
	var last outcome
	for attempt := 0; ; attempt++ {
		again := replayable && attempt < sp.MaxRetries && r.Context().Err() == nil
		ra := r
		if body != nil {
			ra = r.WithContext(r.Context())
			ra.Body, ra.ContentLength, ra.TransferEncoding = io.NopCloser(bytes.NewReader(body)), int64(len(body)), nil
		}
		var view *unreadView
		if unread != nil && body == nil { // ra is r
			view = unread.view()
			ra.Body = view
		}
		aw := w
		var hold *holdWriter
		if again && idempotent && (len(sp.retryOn) > 0 || len(sp.retryOnGRPC) > 0) {
			hold = &holdWriter{ResponseWriter: w, base: w.Header().Clone(), retry: func(code int, h http.Header) bool {
				// A gRPC status in the response header is a Trailers-Only
				// response: nothing of it reached the app yet.
				if !sp.retryOn[code] && !(code == http.StatusOK && sp.retryOnGRPC[h.Get("Grpc-Status")]) {
					return false
				}
				if !sp.budget.withdraw() {
					rt.metrics.RetryBudgetExhausted(telemetry.Outbound, t.service)
					return false
				}
				return true
			}}
			aw = hold
		}
		o := rt.next.serve(aw, ra, t)
		if o.peer == nil {
			// Metrics name the peer the request last reached.
			o.peer = last.peer
		}
		var reason string
		switch {
		case hold != nil && hold.held:
			hold.restore()
			reason = retryStatus
		case again && o.err != nil:
			reason = retryReason(o.err, idempotent)
		case view != nil && o.err != nil && attempt < sp.MaxRetries && r.Context().Err() == nil &&
			retryReason(o.err, false) == retryUnprocessed && unread.retire(view):
			reason = retryUnprocessed
		case view != nil && o.err != nil && attempt < sp.MaxRetries && r.Context().Err() == nil &&
			retryReason(o.err, false) == retryUnprocessed && unsentBody(o.err) != nil:
			// The transport read the body whole, then failed the request
			// before the peer saw it, and gave the body back: later
			// attempts send that copy.
			body, replayable = unsentBody(o.err), true
			reason = retryUnprocessed
		}
		if reason == "" {
			return o
		}
		rt.metrics.Retried(telemetry.Outbound, t.service, reason)
		rt.log.Debug("retrying request", "service", t.service, "reason", reason, "attempt", attempt+1, "error", o.err)
		if o.key != "" {
			t.avoid = append(t.avoid[:len(t.avoid):len(t.avoid)], o.key)
		}
		last = o
	}
}

// retryReason says why a failed attempt may be sent again, "" if not.
func retryReason(err error, idempotent bool) string {
	var fe *forwardError
	switch {
	case !errors.As(err, &fe):
		return ""
	case errors.Is(fe.err, meshcode.ErrNotProcessed):
		return retryUnprocessed
	case idempotent && errors.Is(fe.err, meshcode.ErrConnDead):
		return retryConnDead
	}
	return ""
}

// unsentBody returns the whole request body a transport read and gave
// back with a failure the peer provably never saw (transport/h2tcp: a
// stream beyond the peer's GOAWAY), nil if none.
func unsentBody(err error) []byte {
	var ub interface{ UnsentBody() []byte }
	if errors.As(err, &ub) {
		return ub.UnsentBody()
	}
	return nil
}

// isIdempotent reports whether r's method is idempotent (RFC 9110 9.2.2).
func isIdempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// replayableBody says whether r can be sent more than once: without a
// body it can; an idempotent request's body of at most limit bytes is
// read into memory first (its returned copy is what each attempt
// sends). A larger body is left to stream, r.Body put back together.
func replayableBody(r *http.Request, idempotent bool, limit int) ([]byte, bool, error) {
	if bodyless(r) {
		return nil, true, nil
	}
	if !idempotent || limit <= 0 || r.ContentLength > int64(limit) || r.ContentLength < 0 && !bridge.IsGRPC(r) {
		// An unknown length is read only for gRPC, whose unary clients
		// half-close after their one message: another client could be
		// streaming and waiting for our answer first.
		return nil, false, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return nil, false, fmt.Errorf("reading the request body to make it retryable: %w", err)
	}
	if len(buf) > limit {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		return nil, false, nil
	}
	return buf, true, nil
}

// unreadBody is a request body that cannot be replayed, shared by the
// attempts to send it: an attempt that failed unprocessed before reading
// any of it (x/net/http2's "client conn not usable", a QUIC stream that
// never opened) leaves it whole, so it can go again. A transport closes
// the body of a request it fails (the RoundTripper contract; x/net/http2
// does before returning "client conn not usable"): a close before any
// read is held back until the request is done (release), so that the
// next attempt can still read it; a close after a read goes through at
// once (it may be what unblocks that read).
type unreadBody struct {
	rc    io.ReadCloser
	mu    sync.Mutex
	read  bool       // a read started: the body is no longer whole
	held  bool       // an attempt closed it before any read
	done  bool       // rc was closed
	first unreadView // the first attempt's (one allocation when none is retried)
}

// unreadView is one attempt's body.
type unreadView struct {
	b       *unreadBody
	closed  bool // guarded by b.mu
	retired bool // guarded by b.mu: the attempt is over, the body went on
}

var errRetiredBody = errors.New("outbound: request body read after its attempt ended")

func (b *unreadBody) view() *unreadView {
	if b.first.b == nil {
		b.first.b = b
		return &b.first
	}
	return &unreadView{b: b}
}

func (v *unreadView) Read(p []byte) (int, error) {
	b := v.b
	b.mu.Lock()
	switch {
	case v.retired:
		b.mu.Unlock()
		return 0, errRetiredBody
	case v.closed || b.done:
		b.mu.Unlock()
		return 0, http.ErrBodyReadAfterClose
	}
	b.read = true
	b.mu.Unlock()
	return b.rc.Read(p)
}

func (v *unreadView) Close() error {
	b := v.b
	b.mu.Lock()
	if v.closed || v.retired {
		b.mu.Unlock()
		return nil
	}
	v.closed = true
	if !b.read {
		b.held = true
		b.mu.Unlock()
		return nil
	}
	done := b.done
	b.done = true
	b.mu.Unlock()
	if done {
		return nil
	}
	return b.rc.Close()
}

// retire ends v's attempt if nothing of the body was read, and reports
// whether it did: the body is whole for the next attempt, and v can no
// longer take anything from it.
func (b *unreadBody) retire(v *unreadView) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.read || b.done {
		return false
	}
	v.retired = true
	return true
}

// release closes the body if an attempt closed it while it held the
// close back.
func (b *unreadBody) release() {
	b.mu.Lock()
	closeIt := b.held && !b.done
	b.done = b.done || closeIt
	b.mu.Unlock()
	if closeIt {
		b.rc.Close()
	}
}

// bodyless reports whether r has no body, so it can be sent again.
func bodyless(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || (r.ContentLength == 0 && len(r.TransferEncoding) == 0 && r.ProtoMajor == 1)
}

// holdWriter holds back a response whose status retry accepts (which
// also decides whether the budget allows it): its header is not written
// and its body is discarded, so the request can be sent again. Any other
// response goes through.
type holdWriter struct {
	http.ResponseWriter
	base  http.Header // the header before the attempt
	retry func(code int, header http.Header) bool
	held  bool
	sent  bool
}

func (h *holdWriter) WriteHeader(code int) {
	switch {
	case h.held:
	case code < 200 || h.sent:
		h.ResponseWriter.WriteHeader(code)
	case h.retry(code, h.ResponseWriter.Header()):
		h.held = true
		h.restore()
	default:
		h.sent = true
		h.ResponseWriter.WriteHeader(code)
	}
}

func (h *holdWriter) Write(p []byte) (int, error) {
	if h.held {
		return len(p), nil
	}
	if !h.sent {
		h.WriteHeader(http.StatusOK)
	}
	return h.ResponseWriter.Write(p)
}

// FlushError flushes what went through; a held response has nothing to
// flush.
func (h *holdWriter) FlushError() error {
	if h.held {
		return nil
	}
	return http.NewResponseController(h.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (h *holdWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// restore puts the response header back as it was before the attempt:
// the held response's fields (and trailers, set after its body) must not
// leak into the next attempt's.
func (h *holdWriter) restore() {
	hdr := h.ResponseWriter.Header()
	for k := range hdr {
		if _, ok := h.base[k]; !ok {
			delete(hdr, k)
		}
	}
	for k, v := range h.base {
		hdr[k] = v
	}
}
