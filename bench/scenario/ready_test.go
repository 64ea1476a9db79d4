package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench"
	"github.com/quicmesh/quicmesh/internal/echo"
)

// Every load of the default plan gets a readiness round the load
// generator accepts, on the command line too (targets in a namespace),
// with one slot per worker.
func TestReadyConfig(t *testing.T) {
	for _, l := range DefaultPlan().Loads {
		t.Run(l.ID, func(t *testing.T) {
			cfg := readyConfig(l, "127.0.0.1:1")
			if cfg.Proto == bench.ProtoTCPBulk || cfg.Rate <= 0 || cfg.Timeout != l.requestTimeout() {
				t.Errorf("%+v", cfg)
			}
			if slots := cfg.Rate * cfg.Duration.Seconds(); int(slots+0.5) != max(l.Concurrency, 1) || cfg.Concurrency != max(l.Concurrency, 1) {
				t.Errorf("%v slots for %d workers: %+v", slots, cfg.Concurrency, cfg)
			}
			// A closed port: the run works and counts the failures.
			var out, errOut bytes.Buffer
			if code := bench.Main("bench", readyArgs(cfg), &out, &errOut); code != 0 {
				t.Fatalf("quicmesh-dev bench %q: exit %d: %s", readyArgs(cfg), code, errOut.String())
			}
			var res bench.Result
			if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Proto != cfg.Proto || res.Rate != cfg.Rate || res.Concurrency != cfg.Concurrency {
				t.Errorf("result %+v, %v", res, err)
			}
		})
	}
}

// flakyTCP is a TCP echo server that resets its first refuse connections
// (of every every connections, if every > 0) and serves the others.
type flakyTCP struct {
	ln      net.Listener
	refuse  int64
	every   int64
	n       atomic.Int64
	wg      sync.WaitGroup
	silence bool          // accept and never answer
	first   chan struct{} // closed at the first accepted connection
}

func startFlakyTCP(t *testing.T, refuse int64, silence bool, every int64) *flakyTCP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyTCP{ln: ln, refuse: refuse, every: every, silence: silence, first: make(chan struct{})}
	var conns sync.Map
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := f.n.Add(1)
			if n == 1 {
				close(f.first)
			}
			if i := n - 1; i < f.refuse || f.every > 0 && i%f.every < f.refuse {
				c.Close()
				continue
			}
			conns.Store(c, true)
			f.wg.Go(func() {
				defer c.Close()
				if f.silence {
					_, _ = io.Copy(io.Discard, c)
					return
				}
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		f.wg.Wait()
	})
	return f
}

func TestReady(t *testing.T) {
	httpApp, err := echo.ListenHTTP1("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer httpApp.Close()
	grpcApp, err := echo.ListenGRPC("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer grpcApp.Close()

	tcp := func(timeout time.Duration) Load {
		return Load{ID: "t", Proto: bench.ProtoTCP, Concurrency: 4, Payload: 64, Timeout: timeout}
	}
	for _, tc := range []struct {
		name    string
		load    Load
		front   func(t *testing.T) string
		lossy   bool
		wantErr string // "" = ready
		after   time.Duration
	}{
		{name: "http1", load: Load{ID: "h", Proto: bench.ProtoHTTP1, Concurrency: 8},
			front: func(*testing.T) string { return httpApp.Addr().String() }},
		{name: "grpc", load: Load{ID: "g", Proto: bench.ProtoGRPC, Concurrency: 8},
			front: func(*testing.T) string { return grpcApp.Addr().String() }},
		{name: "grpc-stream", load: Load{ID: "gs", Proto: bench.ProtoGRPCStream, Concurrency: 8},
			front: func(*testing.T) string { return grpcApp.Addr().String() }},
		{name: "tcp", load: tcp(0),
			front: func(t *testing.T) string { return startFlakyTCP(t, 0, false, 0).ln.Addr().String() }},
		{name: "tcp-bulk", load: Load{ID: "b", Proto: bench.ProtoTCPBulk, Concurrency: 1},
			front: func(t *testing.T) string { return startFlakyTCP(t, 0, false, 0).ln.Addr().String() }},
		// The first rounds' connections are reset: ready retries.
		{name: "late", load: tcp(0),
			front: func(t *testing.T) string { return startFlakyTCP(t, 9, false, 0).ln.Addr().String() }},
		// Half of every round's connections are reset: ready on a lossy
		// link only.
		{name: "lossy", load: tcp(200 * time.Millisecond), lossy: true,
			front: func(t *testing.T) string { return startFlakyTCP(t, 2, false, 4).ln.Addr().String() }},
		{name: "lossy-strict", load: tcp(200 * time.Millisecond), wantErr: "lossy-strict not ready after 400ms",
			front: func(t *testing.T) string { return startFlakyTCP(t, 2, false, 4).ln.Addr().String() },
			after: 400 * time.Millisecond},
		// Accepts and never answers: not ready after two timeouts.
		{name: "silent", load: tcp(300 * time.Millisecond), wantErr: "silent not ready after 600ms",
			front: func(t *testing.T) string { return startFlakyTCP(t, 0, true, 0).ln.Addr().String() },
			after: 600 * time.Millisecond},
		{name: "closed", load: tcp(200 * time.Millisecond), wantErr: "closed not ready after 400ms",
			front: func(t *testing.T) string {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				ln.Close()
				return ln.Addr().String()
			},
			after: 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lt := &liveTarget{name: tc.name, front: tc.front(t)}
			start := time.Now()
			err := loadGen{}.ready(context.Background(), tc.load, lt, tc.lossy)
			took := time.Since(start)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("not ready: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			case took < tc.after:
				t.Errorf("gave up after %s, before %s", took, tc.after)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}

// ready stops waiting when its context ends, and says so.
func TestReadyCanceled(t *testing.T) {
	f := startFlakyTCP(t, 0, true, 0)
	ctx, cancel := context.WithCancel(context.Background())
	lt := &liveTarget{name: "silent", front: f.ln.Addr().String()}
	done := make(chan error, 1)
	go func() {
		done <- loadGen{}.ready(ctx, Load{ID: "t", Proto: bench.ProtoTCP, Concurrency: 1, Timeout: time.Hour}, lt, false)
	}()
	// Cancel once a round's connection is in.
	select {
	case err := <-done:
		t.Fatalf("returned before a round: %v", err)
	case <-f.first:
	}
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "silent not ready") {
		t.Fatalf("err %v", err)
	}
}
