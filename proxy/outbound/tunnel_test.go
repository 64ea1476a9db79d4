package outbound

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The tunnel opener redials once when the pooled connection turned out
// dead, and tells the balancer each attempt's setup: a tunnel's lifetime
// is not its endpoint's latency.
func TestTunnelOpener(t *testing.T) {
	stale := meshcode.Mark(errors.New("stateless reset"), meshcode.ErrNotProcessed)
	refused := errors.New("refused by peer")
	tests := []struct {
		name    string
		openErr []error // per connection made, in order
		opens   int     // connections dialed
		failed  []bool  // balancer outcomes in order
		wantErr string
	}{
		{name: "open", openErr: []error{nil}, opens: 1, failed: []bool{false}},
		{name: "dead pooled connection: redial", openErr: []error{stale, nil}, opens: 2, failed: []bool{true, false}},
		{name: "dead twice", openErr: []error{stale, stale}, opens: 2, failed: []bool{true, true}, wantErr: "stateless reset"},
		{name: "refused: no retry", openErr: []error{refused}, opens: 1, failed: []bool{true}, wantErr: "refused by peer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			made := 0
			peers := &fakePeers{newConn: func(string) *fakeConn {
				c := &fakeConn{alive: true, openErr: tt.openErr[made]}
				made++
				return c
			}}
			bal := &fakeBalancer{}
			o := tunnelOpener{connector: newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"db": endpointsAt("a:1")}}, Peers: peers, Balancer: bal, Options: Options{MaxAttempts: 3}}),
				timeout: time.Second, log: slog.New(slog.DiscardHandler)}
			tn, err := o.open(context.Background(), target{service: "db", authority: "db:5432"})
			if tt.wantErr == "" {
				if err != nil || tn.str.(*fakeStream).target != "db:5432" {
					t.Fatalf("open = %+v, %v", tn, err)
				}
			} else {
				var oe *openError
				if !errors.As(err, &oe) || !strings.Contains(err.Error(), tt.wantErr) || oe.peer == nil {
					t.Fatalf("open error %v, want an *openError containing %q", err, tt.wantErr)
				}
			}
			if want := min(len(tt.wantErr), 1) ^ 1; bal.stillOutstanding() != want {
				t.Errorf("%d picks outstanding, want %d (an open tunnel's)", bal.stillOutstanding(), want)
			}
			if made != tt.opens {
				t.Errorf("dialed %d connections, want %d", made, tt.opens)
			}
			var failed []bool
			for _, r := range bal.got() {
				failed = append(failed, r.outcome.Failed)
			}
			if !equalBools(failed, tt.failed) {
				t.Errorf("balancer outcomes %v, want %v", failed, tt.failed)
			}
		})
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A TCP connection whose tunnel cannot be opened is reset (the app is
// never left hanging) and the failure logged once; one that opens is
// spliced, and the balancer heard of it when it opened, before it ended.
func TestTCPForward(t *testing.T) {
	tests := []struct {
		name    string
		eps     []discovery.Endpoint
		openErr error
		logged  string
		spliced bool
	}{
		{name: "no endpoints", logged: "tcp forward failed"},
		{name: "open refused", eps: endpointsAt("a:1"), openErr: errors.New("refused"), logged: "opening tunnel failed"},
		{name: "spliced", eps: endpointsAt("a:1"), spliced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testkit.LogBuffer
			bal := &fakeBalancer{}
			peers := &fakePeers{newConn: func(string) *fakeConn { return &fakeConn{alive: true, openErr: tt.openErr} }}
			f := tcpForward{
				opener: tunnelOpener{connector: newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"db": tt.eps}}, Peers: peers, Balancer: bal, Options: Options{MaxAttempts: 3}}),
					timeout: time.Second, log: slog.New(slog.DiscardHandler)},
				splicer:  splicer{log: slog.New(slog.DiscardHandler)},
				failures: testFailures(&logs),
			}
			app, conn := net.Pipe()
			defer app.Close()
			done := make(chan struct{})
			go func() { defer close(done); f.serveTCP(conn, target{service: "db", authority: "db"}) }()
			if tt.spliced {
				// The fake stream ends at once; the tunnel ends when the
				// app closes its side too.
				app.Close()
			} else if n, err := app.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("app read %d bytes, %v; want the connection reset", n, err)
			}
			<-done
			if !strings.Contains(logs.String(), tt.logged) || (tt.logged == "") != (logs.String() == "") {
				t.Errorf("logged %q, want %q", logs.String(), tt.logged)
			}
			if reports := bal.got(); tt.spliced && (len(reports) != 1 || reports[0].outcome.Failed) {
				t.Errorf("balancer heard %+v, want one success", reports)
			}
			if bal.stillOutstanding() != 0 {
				t.Errorf("%d picks outstanding after the tunnel ended", bal.stillOutstanding())
			}
		})
	}
}

// A long tunnel is one setup-latency sample for its endpoint, taken when
// it opened, and outstanding work until it closes: ten minutes of
// carrying bytes do not make the endpoint look ten minutes slow.
func TestTunnelFeedsSetupLatencyNotLifetime(t *testing.T) {
	clock := time.Unix(0, 0)
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	bal := &fakeBalancer{}
	peers := &fakePeers{newConn: func(string) *fakeConn {
		advance(3 * time.Millisecond) // the handshake
		return &fakeConn{alive: true, holdTunnels: true}
	}}
	c := newConnector(Config{Discovery: &fakeDiscovery{sets: map[string][]discovery.Endpoint{"db": endpointsAt("a:1")}}, Peers: peers, Balancer: bal, Options: Options{MaxAttempts: 3}})
	c.now = now
	f := tcpForward{opener: tunnelOpener{connector: c, timeout: time.Second, log: slog.New(slog.DiscardHandler)}, splicer: splicer{log: slog.New(slog.DiscardHandler)}}
	app, conn := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); f.serveTCP(conn, target{service: "db", authority: "db"}) }()
	if _, err := app.Write([]byte("hello")); err != nil { // carried: the tunnel is open
		t.Fatal(err)
	}
	advance(10 * time.Minute)
	if n := bal.stillOutstanding(); n != 1 {
		t.Fatalf("%d picks outstanding while the tunnel is open, want 1", n)
	}
	app.Close()
	<-done
	reports := bal.got()
	if len(reports) != 1 || reports[0].outcome.Latency != 3*time.Millisecond || reports[0].outcome.Failed {
		t.Fatalf("balancer heard %+v, want one 3ms success", reports)
	}
	if n := bal.stillOutstanding(); n != 0 {
		t.Fatalf("%d picks outstanding after the tunnel closed", n)
	}
}
