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
	"github.com/quicmesh/quicmesh/transport/meshcode"
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
	// inFlight counts Gets not yet returned; onDial, if set, runs at the
	// start of each.
	inFlight atomic.Int64
	onDial   func()
	// until, if set, is when every Get ends instead (one dial in flight
	// that all Gets wait for, as in the real pools).
	until time.Time
}

func (f *fake) set(delay time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay, f.err = delay, err
}

func (f *fake) Get(ctx context.Context, addr string, want identity.ID) (conn, error) {
	f.dials.Add(1)
	f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	f.mu.Lock()
	delay, err, onDial := f.delay, f.err, f.onDial
	if !f.until.IsZero() {
		delay = time.Until(f.until)
	}
	f.mu.Unlock()
	if onDial != nil {
		onDial()
	}
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

// A peer whose QUIC connection stopped answering and whose kernel takes
// the TCP connect while its process never answers (SIGSTOP): the request
// re-sent after the liveness failure waits for TCP no longer than the
// suspect wait, then the peer is in back-off and further Gets fail at
// once without a dial, until a probe finds it answering again.
func TestFrozenPeerFailsFastAfterQUICDied(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	// The back-off's clock stands still until the test moves it: a
	// loaded machine must not end the back-off between two checks.
	var clock atomic.Int64
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	p := New[conn](q, tc, Config{RaceDelay: 50 * time.Millisecond, Now: now})
	defer p.Close()
	if _, over, err := p.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverQUIC {
		t.Fatalf("healthy peer: %v %v", over, err)
	}
	// Frozen: the QUIC pool is in back-off after the liveness failure,
	// a TCP dial gets no TLS answer until its context ends.
	q.set(0, reasonErr("unresponsive"))
	tc.set(time.Hour, nil)
	p.QUICFailed("a", want, time.Millisecond)
	wait := p.SuspectWait(time.Millisecond)
	start := time.Now()
	_, _, err := p.Get(testkit.HangCtx(t), "a", want)
	took := time.Since(start)
	if err == nil || !errors.Is(err, errSuspectWait) {
		t.Fatalf("Get to a frozen peer: %v, want the suspect wait's error", err)
	}
	if took < wait {
		t.Fatalf("Get gave up on TCP after %v, before the suspect wait %v", took, wait)
	}
	t.Logf("failed after %v (suspect wait %v)", took.Round(time.Millisecond), wait)
	if !p.Unavailable("a", want) {
		t.Fatal("a peer that answered over neither transport is not reported unavailable")
	}
	dq, dt := q.dials.Load(), tc.dials.Load()
	if _, _, err := p.Get(testkit.HangCtx(t), "a", want); !errors.Is(err, meshcode.ErrPeerUnavailable) {
		t.Fatalf("Get during the back-off: %v, want ErrPeerUnavailable", err)
	}
	if q.dials.Load() != dq || tc.dials.Load() != dt {
		t.Fatal("a Get during the back-off dialled")
	}
	// After the back-off one Get probes; the others fail at once
	// meanwhile.
	clock.Add(int64(downBackoff(1)))
	q.set(time.Hour, nil) // a QUIC dial in flight until its context ends
	ctx, cancel := context.WithCancel(testkit.HangCtx(t))
	probed := make(chan error, 1)
	go func() { _, _, err := p.Get(ctx, "a", want); probed <- err }()
	testkit.Eventually(t, "the probe dialling", func() bool { return q.dials.Load() > dq })
	dq = q.dials.Load()
	if _, _, err := p.Get(testkit.HangCtx(t), "a", want); !errors.Is(err, meshcode.ErrPeerUnavailable) || q.dials.Load() != dq {
		t.Fatalf("Get during the probe: %v, %d more QUIC dials; want ErrPeerUnavailable and none", err, q.dials.Load()-dq)
	}
	cancel()
	if err := <-probed; err == nil {
		t.Fatal("a cancelled probe succeeded")
	}
	// A caller that gave up says nothing of the peer: no new back-off.
	if p.Unavailable("a", want) {
		t.Fatal("a cancelled probe put the peer in back-off")
	}
	// Thawed: the first Get after the back-off probes and gets through.
	q.set(0, nil)
	if p.Unavailable("a", want) {
		t.Fatal("the peer still unavailable after its back-off")
	}
	if _, over, err := p.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverQUIC {
		t.Fatalf("thawed peer: %v %v", over, err)
	}
	if p.down("a", want) {
		t.Fatal("the peer stayed in back-off after a success")
	}
}

// A live peer whose UDP became blocked answers TCP within the suspect
// wait: the request moves to TCP and the peer is marked QUIC-blocked,
// not put in back-off.
func TestBlockedUDPAfterQUICDiedMovesToTCP(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	p := New[conn](q, tc, Config{RaceDelay: 50 * time.Millisecond, ReprobeMin: time.Hour})
	defer p.Close()
	if _, _, err := p.Get(testkit.HangCtx(t), "a", want); err != nil {
		t.Fatal(err)
	}
	q.set(0, reasonErr("unresponsive"))
	tc.set(5*time.Millisecond, nil)
	p.QUICFailed("a", want, time.Millisecond)
	if c, over, err := p.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverTCP || c != "tcp" {
		t.Fatalf("Get after QUIC died with TCP open: %v %v %v", c, over, err)
	}
	if !p.Blocked("a", want) || p.Unavailable("a", want) {
		t.Fatalf("blocked %v, unavailable %v; want QUIC-blocked and available", p.Blocked("a", want), p.Unavailable("a", want))
	}
}

func TestSuspectWaitScalesWithRTT(t *testing.T) {
	p := New[conn](&fake{}, &fake{}, Config{})
	defer p.Close()
	if got := p.SuspectWait(0); got != 2*DefaultRaceDelay {
		t.Errorf("SuspectWait(0) = %v, want %v", got, 2*DefaultRaceDelay)
	}
	if got := p.SuspectWait(200 * time.Millisecond); got != 1600*time.Millisecond {
		t.Errorf("SuspectWait(200ms) = %v, want 1.6s", got)
	}
}

// A frozen peer (SIGSTOP: its kernel completes a TCP connect, its
// process never answers, over TCP nor over QUIC) whose QUIC connection
// was in use: no Get waits for it longer than the suspect wait, whatever
// the QUIC pool does. The pools' dials get no answer until their dial
// timeout (dialTimeout, far above the suspect wait). Rows:
//   - its QUIC connection died under a request (QUICFailed), and the
//     QUIC pool, its back-off over, redials: the Get must not wait for
//     that dial (base: it did, 1 s in the process test on top of the
//     liveness timeout and the suspect wait: 2.66 s against 2.5 s);
//   - its QUIC connection died with no request to report it (an idle
//     connection, or only POSTs and tunnels on it): the QUIC pool fails
//     the hot path at once (its back-off after the liveness verdict),
//     which makes the peer suspect as QUICFailed would (base: the TCP
//     dial's whole timeout).
func TestFrozenPeerGetsWithinTheSuspectWait(t *testing.T) {
	// The pools' dial timeout, far above the suspect wait (100 ms here);
	// never: a QUIC dial the probe's timeout (the policy's) ends.
	const never, dialTimeout = time.Hour, time.Second
	silent := reasonErr("timeout")
	for _, tc := range []struct {
		name       string
		quicFailed bool          // the connection died under a request
		quicDelay  time.Duration // the QUIC pool's Get to the frozen peer
		quicErr    error
		// tcpWhileQUIC: TCP must be dialled while QUIC's dial is in
		// flight; suspect: the Get must end with the suspect wait, QUIC's
		// dial still in flight if quicStillDialling.
		tcpWhileQUIC, suspect, quicStillDialling bool
	}{
		{name: "QUICFailed, the QUIC pool redials", quicFailed: true, quicDelay: never, quicErr: silent, tcpWhileQUIC: true, suspect: true, quicStillDialling: true},
		{name: "no request saw it die, the QUIC pool in back-off", quicDelay: 0, quicErr: errors.New("transport: peer unavailable: last failed 1ms ago: sent nothing for 1s"), suspect: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, tcp := &fake{name: "quic"}, &fake{name: "tcp"}
			p := New[conn](q, tcp, Config{RaceDelay: 50 * time.Millisecond, ProbeTimeout: 3 * dialTimeout})
			defer func() {
				// The dials a Get no longer waits for end with the
				// policy (their context is its own).
				q.set(0, silent)
				p.Close()
			}()
			ctx := testkit.HangCtx(t)
			if _, over, err := p.Get(ctx, "a", want); err != nil || over != OverQUIC {
				t.Fatalf("healthy peer: %v %v", over, err)
			}
			// Frozen.
			q.set(tc.quicDelay, tc.quicErr)
			quicDialEnds := time.Now().Add(tc.quicDelay)
			q.until = quicDialEnds
			tcp.set(dialTimeout, silent)
			var tcpWhileQUIC atomic.Bool
			tcp.onDial = func() { tcpWhileQUIC.Store(time.Now().Before(quicDialEnds)) }
			if tc.quicFailed {
				p.QUICFailed("a", want, time.Millisecond)
			}
			_, _, err := p.Get(ctx, "a", want)
			quicDialling := q.inFlight.Load() > 0
			switch {
			case err == nil:
				t.Fatal("Get to a frozen peer succeeded")
			case tc.suspect && !errors.Is(err, errSuspectWait):
				t.Fatalf("Get to a frozen peer: %v; want the suspect wait's error", err)
			case tc.quicStillDialling && !quicDialling:
				t.Fatalf("Get to a frozen peer waited for the QUIC pool's dial: %v", err)
			case tc.tcpWhileQUIC && !tcpWhileQUIC.Load():
				t.Fatalf("TCP was dialled only after QUIC's dial ended: %v", err)
			}
			if tc.suspect && !p.Unavailable("a", want) {
				t.Fatal("a peer that answered over neither transport is not reported unavailable")
			}
		})
	}
}

// A QUIC failure marked meshcode.ErrPeerRestarting (the peer drained
// moments ago and its port is closed while it restarts) is no UDP block:
// no TCP dial, no QUIC-blocked mark, and no back-off of the policy's own,
// so the next Get dials QUIC again and finds the peer back.
func TestRestartingPeerDoesNotFallBack(t *testing.T) {
	q, tc := &fake{name: "quic"}, &fake{name: "tcp"}
	q.set(0, meshcode.Mark(reasonErr("unreachable"), meshcode.ErrPeerRestarting))
	tc.set(0, reasonErr("unreachable"))
	p := New[conn](q, tc, Config{RaceDelay: time.Second})
	defer p.Close()
	if _, _, err := p.Get(testkit.HangCtx(t), "a", want); !errors.Is(err, meshcode.ErrPeerRestarting) {
		t.Fatalf("Get: %v; want the QUIC error", err)
	}
	if tc.dials.Load() != 0 || p.Blocked("a", want) || p.Unavailable("a", want) {
		t.Fatalf("%d TCP dials, blocked %v, unavailable %v; want none of them", tc.dials.Load(), p.Blocked("a", want), p.Unavailable("a", want))
	}
	q.set(0, nil)
	if _, over, err := p.Get(testkit.HangCtx(t), "a", want); err != nil || over != OverQUIC {
		t.Fatalf("Get once the peer is back: %v %v; want QUIC", over, err)
	}
}
