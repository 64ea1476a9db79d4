package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// fakeClock is a settable clock for log rate limiting and back-off.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// waitLines waits until n lines with msg were logged (the server logs from
// its own goroutines, after the client already saw the refusal) and
// returns them.
func waitLines(t *testing.T, logs *testkit.LogBuffer, msg string, n int) []string {
	t.Helper()
	testkit.Eventually(t, fmt.Sprintf("%d %q log lines", n, msg), func() bool { return len(logs.Lines(msg)) >= n })
	return logs.Lines(msg)
}

func assertFields(t *testing.T, line string, fields ...string) {
	t.Helper()
	for _, f := range fields {
		if !strings.Contains(line, " "+f) {
			t.Errorf("log line lacks %s:\n%s", f, line)
		}
	}
}

func handshakeFailures(t *testing.T, reg *prometheus.Registry, dir, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "quicmesh_handshake_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["direction"] == dir && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// side is one sidecar's endpoint with its own logs, metrics and clock.
type side struct {
	ep    *transport.Endpoint
	logs  *testkit.LogBuffer
	reg   *prometheus.Registry
	clock *fakeClock
}

func newSide(t *testing.T, listen bool, prov identity.Provider, limits transport.Limits) *side {
	t.Helper()
	s := &side{logs: &testkit.LogBuffer{}, reg: prometheus.NewRegistry(), clock: newFakeClock()}
	cfg := transport.Config{Identity: prov, Logger: s.logs.Logger(slog.LevelWarn), Observer: telemetry.New(s.reg).Handshakes(), Now: s.clock.Now, Limits: limits}
	var err error
	if listen {
		s.ep, err = transport.Listen("127.0.0.1:0", cfg)
	} else {
		s.ep, err = transport.NewDialer("127.0.0.1:0", cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	if listen {
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := s.ep.Accept(context.Background())
				if err != nil {
					return
				}
				serveHTTP3(t, c)
			}
		})
		t.Cleanup(func() { s.ep.Close(); wg.Wait() })
	} else {
		t.Cleanup(func() { s.ep.Close() })
	}
	return s
}

// A refused handshake is a failed dial on the dialling side (back-off,
// metrics, an error naming the reason; never a pooled connection), and
// both sides count it and log it once per peer and reason per interval,
// with the peer's address and the identity it presented.
func TestRefusedHandshakeIsAFailedDialAndLoggedOnce(t *testing.T) {
	goodCA := identitytest.NewCA(t, "t.local")
	otherCA := identitytest.NewCA(t, "t.local")
	expiredClient := func(t *testing.T) identity.Provider {
		cert, err := goodCA.IssueWithValidity(identity.MustParseID(clientID), time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return identity.NewStaticProvider(cert, goodCA.Pool())
	}
	foreignClient := func(t *testing.T) identity.Provider {
		p := identitytest.Provider(t, otherCA, clientID)
		cert, err := p.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		p.Set(cert, goodCA.Pool()) // trusts the server; the server does not trust it
		return p
	}
	tests := []struct {
		name         string
		client       func(*testing.T) identity.Provider
		serverID     string
		clientReason string // reason on the dialling side
		serverReason string // reason on the listening side
		serverSees   string // presented_identity the server logs
		clientSees   string // presented_identity the client logs ("" = field absent)
	}{
		// The server does not tell a refused client why (the alert is
		// just "bad certificate"); it logs the reason itself.
		{"client cert from another CA", foreignClient, serverID, transport.ReasonPeerRefused, identity.ReasonUntrusted, clientID, ""},
		{"expired client cert", expiredClient, serverID, transport.ReasonPeerRefused, identity.ReasonExpired, clientID, ""},
		{"server has the wrong identity", func(t *testing.T) identity.Provider { return identitytest.Provider(t, goodCA, clientID) },
			"spiffe://t.local/impostor", identity.ReasonWrongID, transport.ReasonPeerRefused, "none", "spiffe://t.local/impostor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testkit.CheckLeaks(t)
			srv := newSide(t, true, identitytest.Provider(t, goodCA, tt.serverID), transport.Limits{})
			cli := newSide(t, false, tt.client(t), transport.Limits{})
			pool := transport.NewPool(cli.ep)
			t.Cleanup(func() { pool.Close() })
			addr := srv.ep.Addr().String()
			want := identity.MustParseID(serverID)

			_, err := pool.Get(context.Background(), addr, want)
			if !errors.Is(err, transport.ErrPeerUnavailable) {
				t.Fatalf("Get: %v, want ErrPeerUnavailable", err)
			}
			de, ok := errors.AsType[*transport.DialError](err)
			if !ok || de.Reason != tt.clientReason || !strings.Contains(err.Error(), "("+tt.clientReason+")") {
				t.Fatalf("Get: %v; want a DialError naming reason %q", err, tt.clientReason)
			}
			if pool.Len() != 0 {
				t.Fatal("a refused connection is pooled")
			}
			if !pool.Unavailable(addr, want) {
				t.Fatal("no back-off after a refused dial")
			}

			clientLines := waitLines(t, cli.logs, "peer dial failed", 1)
			serverLines := waitLines(t, srv.logs, "inbound handshake refused", 1)
			if len(clientLines) != 1 || len(serverLines) != 1 {
				t.Fatalf("logged %d client and %d server lines, want one each:\n%s\n%s", len(clientLines), len(serverLines), clientLines, serverLines)
			}
			assertFields(t, clientLines[0], "level=WARN", "peer="+addr, "identity="+serverID, "reason="+tt.clientReason, "error=")
			if tt.clientSees != "" {
				assertFields(t, clientLines[0], "presented_identity="+tt.clientSees)
			}
			assertFields(t, serverLines[0], "level=WARN", "peer="+cli.ep.Addr().String(), "reason="+tt.serverReason, "presented_identity="+tt.serverSees, "error=")
			if got := handshakeFailures(t, cli.reg, "outbound", tt.clientReason); got != 1 {
				t.Errorf("client counted %v %s failures, want 1", got, tt.clientReason)
			}
			if got := handshakeFailures(t, srv.reg, "inbound", tt.serverReason); got != 1 {
				t.Errorf("server counted %v %s failures, want 1", got, tt.serverReason)
			}

			// Refused again and again within one log interval: counted
			// every time, logged once. The pool redials after each back-off.
			const again = 3
			for range again {
				cli.clock.Advance(3 * time.Second) // past the back-off, within the 10 s log interval
				if _, err := pool.Get(context.Background(), addr, want); err == nil {
					t.Fatal("refused peer dialled successfully")
				}
			}
			waitCount := func(reg *prometheus.Registry, dir, reason string, n float64) {
				deadline := time.Now().Add(10 * time.Second)
				for handshakeFailures(t, reg, dir, reason) < n && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				if got := handshakeFailures(t, reg, dir, reason); got != n {
					t.Fatalf("%s counted %v %s failures, want %v", dir, got, reason, n)
				}
			}
			waitCount(cli.reg, "outbound", tt.clientReason, 1+again)
			waitCount(srv.reg, "inbound", tt.serverReason, 1+again)
			if n, m := len(cli.logs.Lines("peer dial failed")), len(srv.logs.Lines("inbound handshake refused")); n != 1 || m != 1 {
				t.Fatalf("repeated refusals logged %d client and %d server lines, want 1 each", n, m)
			}

			// After the interval the next refusal is logged with the count
			// of the suppressed ones.
			cli.clock.Advance(10 * time.Second)
			srv.clock.Advance(10 * time.Second)
			pool.Get(context.Background(), addr, want)
			clientLines = waitLines(t, cli.logs, "peer dial failed", 2)
			serverLines = waitLines(t, srv.logs, "inbound handshake refused", 2)
			if len(clientLines) != 2 || len(serverLines) != 2 {
				t.Fatalf("after the interval: %d client and %d server lines, want 2 each", len(clientLines), len(serverLines))
			}
			assertFields(t, clientLines[1], "suppressed=3")
			assertFields(t, serverLines[1], "suppressed=3")
		})
	}
}

// A client that sends no certificate at all is refused, counted and logged
// as no_certificate (crypto/tls used to reject it before our callback, so
// it was counted nowhere).
func TestClientWithoutCertificateRefusedAndCounted(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	srv := newSide(t, true, identitytest.Provider(t, ca, serverID), transport.Limits{})
	tlsConf := &tls.Config{NextProtos: []string{transport.ALPN}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, srv.ep.Addr().String(), tlsConf, nil)
	if err == nil {
		// TLS 1.3: the client may finish first; the server's refusal
		// closes the connection right after.
		select {
		case <-conn.Context().Done():
		case <-ctx.Done():
			t.Fatal("a client without a certificate was not refused")
		}
	}
	lines := waitLines(t, srv.logs, "inbound handshake refused", 1)
	if len(lines) != 1 {
		t.Fatalf("logged %d lines, want 1: %q", len(lines), lines)
	}
	assertFields(t, lines[0], "reason="+identity.ReasonNoCertificate, "presented_identity=none", "peer=127.0.0.1:")
	if got := handshakeFailures(t, srv.reg, "inbound", identity.ReasonNoCertificate); got != 1 {
		t.Fatalf("counted %v no_certificate failures, want 1", got)
	}
}

// Beyond MaxHandshakes in progress, new connection attempts are refused
// (CONNECTION_REFUSED), which the listener counts as "overloaded" and the
// dialling side reports as "refused";
// once the stalled handshake finishes, dials succeed again.
func TestHandshakesInProgressAreCapped(t *testing.T) {
	testkit.CheckLeaks(t)
	ca := identitytest.NewCA(t, "t.local")
	// The stalled client sends nothing while it stalls: a connect
	// timeout longer than any scheduling delay keeps the listener from
	// giving up on it before the test is done.
	srv := newSide(t, true, identitytest.Provider(t, ca, serverID), transport.Limits{MaxHandshakes: 1, DialTimeout: 10 * time.Second, HandshakeTimeout: 10 * time.Second})
	addr := srv.ep.Addr().String()

	// A client that stalls in the middle of its handshake, after its
	// address was validated, holds the only slot.
	release := make(chan struct{})
	unstall := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unstall)
	stalled := make(chan struct{})
	prov := identitytest.Provider(t, ca, clientID)
	tlsConf := identity.ClientConfig(prov, identity.MustParseID(serverID), []string{transport.ALPN})
	getCert := tlsConf.GetClientCertificate
	tlsConf.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		close(stalled)
		<-release
		return getCert(cri)
	}
	stalledDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{HandshakeIdleTimeout: 10 * time.Second})
		if err == nil {
			conn.CloseWithError(0, "")
		}
		stalledDone <- err
	}()
	<-stalled
	waitGauge(t, srv.reg, 1)

	cli := newSide(t, false, identitytest.Provider(t, ca, clientID), transport.Limits{})
	_, err := cli.ep.Dial(context.Background(), addr, identity.MustParseID(serverID))
	if de, ok := errors.AsType[*transport.DialError](err); !ok || de.Reason != transport.ReasonRefused {
		t.Fatalf("dial beyond the cap: %v; want a DialError with reason %q", err, transport.ReasonRefused)
	}
	lines := waitLines(t, srv.logs, "inbound handshake refused", 1)
	if len(lines) != 1 {
		t.Fatalf("logged %q, want one line", lines)
	}
	assertFields(t, lines[0], "reason="+transport.ReasonOverloaded, "peer="+cli.ep.Addr().String())
	// Counted per refused Initial: a ClientHello with a post-quantum key
	// share spans two, and the refusal keeps no state to tell them apart.
	if got := handshakeFailures(t, srv.reg, "inbound", transport.ReasonOverloaded); got < 1 {
		t.Fatalf("counted %v overloaded refusals, want at least 1", got)
	}

	unstall()
	if err := <-stalledDone; err != nil {
		t.Fatalf("stalled handshake: %v", err)
	}
	waitGauge(t, srv.reg, 0)
	conn, err := cli.ep.Dial(context.Background(), addr, identity.MustParseID(serverID))
	if err != nil {
		t.Fatalf("dial after the slot was freed: %v", err)
	}
	conn.CloseWithError(0, "")
}

// waitGauge waits for quicmesh_handshakes_in_progress to reach n.
func waitGauge(t *testing.T, reg *prometheus.Registry, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := testutil.GatherAndCount(reg, "quicmesh_handshakes_in_progress")
		if err != nil {
			t.Fatal(err)
		}
		v := 0.0
		if got > 0 {
			mfs, _ := reg.Gather()
			for _, mf := range mfs {
				if mf.GetName() == "quicmesh_handshakes_in_progress" {
					v = mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
		}
		if v == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshakes in progress: %v, want %v", v, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
