package fallback

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

type conn string

func (conn) Alive() bool { return true }

// fake is a pool whose dials answer after delay with err (nil: a conn).
type fake struct {
	name  string
	mu    sync.Mutex
	delay time.Duration
	err   error
	dials atomic.Int64
}

func (f *fake) set(delay time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay, f.err = delay, err
}

func (f *fake) Get(ctx context.Context, addr string, want identity.ID) (conn, error) {
	f.dials.Add(1)
	f.mu.Lock()
	delay, err := f.delay, f.err
	f.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if err != nil {
		return "", err
	}
	return conn(f.name), nil
}

func (f *fake) Unavailable(string, identity.ID) bool { return false }

type reasonErr string

func (r reasonErr) Error() string         { return "dial failed: " + string(r) }
func (r reasonErr) FailureReason() string { return string(r) }

var want = identity.MustParseID("spiffe://test.local/peer")

func TestRaceFallsBackAndMovesBack(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	q.set(300*time.Millisecond, reasonErr("timeout")) // UDP blocked: no answer
	p := New[conn](q, tc, Config{RaceDelay: 50 * time.Millisecond, ReprobeMin: 100 * time.Millisecond, ReprobeMax: 200 * time.Millisecond})
	defer p.Close()

	c, over, err := p.Get(testkit.HangCtx(t), "a", want)
	if err != nil || over != OverTCP || c != "tcp" {
		t.Fatalf("first Get: %v %v %v, want the TCP conn", c, over, err)
	}
	testkit.Eventually(t, "the peer marked blocked once QUIC failed", func() bool { return p.Blocked("a", want) })
	// Blocked: TCP straight away, no QUIC dial on the request path.
	before := q.dials.Load()
	if _, over, _ := p.Get(testkit.HangCtx(t), "a", want); over != OverTCP {
		t.Fatal("a blocked peer got QUIC")
	}
	q.set(0, nil) // UDP back
	testkit.Eventually(t, "the re-prober moving the peer back", func() bool { return !p.Blocked("a", want) })
	if q.dials.Load() == before {
		t.Fatal("no QUIC re-probe")
	}
	if _, over, _ := p.Get(testkit.HangCtx(t), "a", want); over != OverQUIC {
		t.Fatal("the peer did not move back to QUIC")
	}
}

func TestQUICWithinHeadStartNeverDialsTCP(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	q.set(5*time.Millisecond, nil)
	p := New[conn](q, tc, Config{RaceDelay: time.Second})
	defer p.Close()
	if _, over, err := p.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverQUIC {
		t.Fatalf("%v %v", over, err)
	}
	if tc.dials.Load() != 0 {
		t.Fatal("TCP dialled although QUIC answered within its head start")
	}
}

func TestPeerAnswerDoesNotFallBack(t *testing.T) {
	for _, reason := range []string{"wrong_id", "untrusted", "peer_refused", "refused"} {
		q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
		q.set(0, reasonErr(reason))
		p := New[conn](q, tc, Config{RaceDelay: time.Second})
		_, _, err := p.Get(testkit.HangCtx(t), "a", want)
		p.Close()
		if err == nil || tc.dials.Load() != 0 || p.Blocked("a", want) {
			t.Errorf("%s: err %v, %d TCP dials, blocked %v; want the QUIC error and no fallback", reason, err, tc.dials.Load(), p.Blocked("a", want))
		}
	}
}

func TestModesUseOneTransport(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	q.set(0, errors.New("no UDP"))
	p := New[conn](q, tc, Config{Mode: QUIC})
	defer p.Close()
	if _, _, err := p.Get(testkit.HangCtx(t), "a", want); err == nil || tc.dials.Load() != 0 {
		t.Fatalf("quic mode: %v, %d TCP dials", err, tc.dials.Load())
	}
	p2 := New[conn](q, tc, Config{Mode: TCP})
	defer p2.Close()
	if c, over, err := p2.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverTCP || c != "tcp" {
		t.Fatalf("tcp mode: %v %v %v", c, over, err)
	}
	if _, err := ParseMode("sctp"); err == nil {
		t.Fatal("ParseMode accepted sctp")
	}
}
