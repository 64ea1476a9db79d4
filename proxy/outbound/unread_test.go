package outbound

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// closeCounting is a streamed request body (not replayable) that counts
// its closes.
type closeCounting struct {
	io.Reader
	closes atomic.Int32
}

func (b *closeCounting) Close() error { b.closes.Add(1); return nil }

// bodyStage is a next stage whose attempts each read n bytes of the
// request body (-1: all of it), as a transport would before failing,
// then close it (as a transport does with the body of a request it
// fails: x/net/http2 closes it before returning "client conn not
// usable"), then fail with err or answer with what they read.
type bodyStage struct {
	peer     PeerConn
	attempts []bodyAttempt
	got      []string // what each attempt read
}

// unsentErr is a transport failure that gives the request body back.
type unsentErr struct {
	error
	body []byte
}

func (e *unsentErr) Unwrap() error      { return e.error }
func (e *unsentErr) UnsentBody() []byte { return e.body }

type bodyAttempt struct {
	read int
	err  error
}

func (s *bodyStage) serve(w http.ResponseWriter, r *http.Request, t target) outcome {
	a := s.attempts[min(len(s.got), len(s.attempts)-1)]
	var b []byte
	var err error
	if a.read < 0 {
		b, err = io.ReadAll(r.Body)
	} else if a.read > 0 {
		b = make([]byte, a.read)
		_, err = io.ReadFull(r.Body, b)
	}
	s.got = append(s.got, string(b))
	if err != nil {
		return outcome{peer: s.peer, err: &forwardError{s.peer, err}}
	}
	r.Body.Close()
	if a.err != nil {
		return outcome{peer: s.peer, err: a.err}
	}
	w.WriteHeader(200)
	w.Write(b)
	return outcome{peer: s.peer, res: bridge.Result{Status: 200}}
}

// A request whose body cannot be replayed (a POST) is sent again when its
// attempt failed unprocessed before reading any of it, however often the
// transport closed it meanwhile; one whose body was read even in part is
// not (the peer may have it: no duplicated POST), nor one that failed
// otherwise. The app's body is closed once, when the request is done.
func TestRetryUnreadBody(t *testing.T) {
	peer := &fakeConn{addr: "p:1", peer: identity.MustParseID("spiffe://test/p")}
	unusable := &forwardError{peer, meshcode.Mark(errors.New("http2: client conn not usable"), meshcode.ErrNotProcessed)}
	dead := &forwardError{peer, meshcode.Mark(errors.New("connection closed"), meshcode.ErrConnDead, meshcode.ErrConnClosed)}
	const body = "payload"
	// A transport that read the body whole, then failed the request
	// before the peer saw it, giving the body back (transport/h2tcp: a
	// stream beyond the peer's GOAWAY).
	unsent := &forwardError{peer, &unsentErr{meshcode.Mark(errors.New("http2: Transport received Server's graceful shutdown GOAWAY"), meshcode.ErrNotProcessed), []byte(body)}}
	tests := []struct {
		name     string
		method   string
		policy   ServicePolicy
		attempts []bodyAttempt
		got      []string // what each attempt read
		status   int      // 0: the app gets the error
		reasons  float64  // unprocessed retries
	}{
		{name: "unread, unprocessed: retried", method: "POST", attempts: []bodyAttempt{{read: 0, err: unusable}, {read: -1}},
			got: []string{"", body}, status: 200, reasons: 1},
		{name: "unread twice: retried up to MaxRetries", method: "POST", attempts: []bodyAttempt{{read: 0, err: unusable}, {read: 0, err: unusable}, {read: -1}},
			got: []string{"", "", body}, status: 200, reasons: 2},
		{name: "unread every time: the last error", method: "POST", attempts: []bodyAttempt{{read: 0, err: unusable}},
			got: []string{"", "", ""}, reasons: 2},
		{name: "partly read, unprocessed: not retried", method: "POST", attempts: []bodyAttempt{{read: 3, err: unusable}, {read: -1}},
			got: []string{"pay"}},
		{name: "read whole, unprocessed, given back: retried with the copy", method: "POST", attempts: []bodyAttempt{{read: -1, err: unsent}, {read: -1, err: unsent}, {read: -1}},
			got: []string{body, body, body}, status: 200, reasons: 2},
		{name: "unread, connection died: not retried", method: "POST", attempts: []bodyAttempt{{read: 0, err: dead}, {read: -1}},
			got: []string{""}},
		{name: "no retries configured", method: "POST", policy: ServicePolicy{MaxRetries: -1}, attempts: []bodyAttempt{{read: 0, err: unusable}, {read: -1}},
			got: []string{""}},
		{name: "streamed PUT above the replay limit, unread", method: "PUT", policy: ServicePolicy{RetryBodyBytes: 3},
			attempts: []bodyAttempt{{read: 0, err: unusable}, {read: -1}}, got: []string{"", body}, status: 200, reasons: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			pol := newPolicies(Resilience{Default: tt.policy}, time.Now)
			next := &bodyStage{peer: peer, attempts: tt.attempts}
			rt := retries{log: slog.New(slog.DiscardHandler), metrics: telemetry.New(reg), next: next}
			appBody := &closeCounting{Reader: strings.NewReader(body)}
			r := httptest.NewRequest(tt.method, "/", nil)
			r.Body, r.ContentLength = appBody, int64(len(body))
			rec := httptest.NewRecorder()
			o := rt.serve(rec, r, target{service: "web", authority: "web", policy: pol.get("web")})
			if strings.Join(next.got, "|") != strings.Join(tt.got, "|") {
				t.Fatalf("attempts read %q, want %q", next.got, tt.got)
			}
			if tt.status == 0 {
				if o.err == nil {
					t.Fatalf("outcome %+v, want the last attempt's error", o)
				}
			} else if o.err != nil || rec.Code != tt.status || rec.Body.String() != body {
				t.Fatalf("app got %d %q, error %v; want %d %q", rec.Code, rec.Body.String(), o.err, tt.status, body)
			}
			if n := appBody.closes.Load(); n != 1 {
				t.Errorf("the app's body was closed %d times, want once", n)
			}
			if n := testkit.MetricSum(t, reg, "quicmesh_retries_total", "reason", retryUnprocessed); n != tt.reasons {
				t.Errorf("%v unprocessed retries, want %v", n, tt.reasons)
			}
		})
	}
}

// An attempt that was retried can take nothing more from the body: a
// transport still reading it late would steal the next attempt's bytes.
func TestUnreadBodyRetiredAttemptReadsNothing(t *testing.T) {
	b := &unreadBody{rc: io.NopCloser(strings.NewReader("payload"))}
	first := b.view()
	first.Close()
	if !b.retire(first) {
		t.Fatal("an unread body was not retired")
	}
	if n, err := first.Read(make([]byte, 8)); n != 0 || !errors.Is(err, errRetiredBody) {
		t.Fatalf("late read of a retired attempt: %d, %v", n, err)
	}
	got, err := io.ReadAll(b.view())
	if err != nil || string(got) != "payload" {
		t.Fatalf("next attempt read %q, %v; want the whole body", got, err)
	}
	if b.retire(b.view()) {
		t.Fatal("a body that was read was retired for another attempt")
	}
}
