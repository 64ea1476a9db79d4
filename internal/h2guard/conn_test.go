package h2guard

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name  string
		steps []struct {
			after          time.Duration
			resets, opened int
		}
		wantDry bool
	}{
		{"burst of resets within the budget", []struct {
			after          time.Duration
			resets, opened int
		}{{0, 200, 0}}, false},
		{"one more than the burst", []struct {
			after          time.Duration
			resets, opened int
		}{{0, 201, 0}}, true},
		{"streams opened pay for half as many resets", []struct {
			after          time.Duration
			resets, opened int
		}{{0, 200, 0}, {0, 50, 100}}, false},
		{"open and reset every stream", []struct {
			after          time.Duration
			resets, opened int
		}{{0, 100, 100}, {0, 100, 100}, {0, 100, 100}, {0, 100, 100}, {0, 100, 100}}, true},
		{"time refills", []struct {
			after          time.Duration
			resets, opened int
		}{{0, 200, 0}, {time.Second, 100, 0}}, false},
		{"refill is capped at the burst", []struct {
			after          time.Duration
			resets, opened int
		}{{time.Hour, 201, 0}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := Limit{}.withDefaults()
			b := bucket{lim: lim, tokens: lim.Burst, last: t0}
			now, dry := t0, false
			for _, s := range tc.steps {
				now = now.Add(s.after)
				dry = b.spend(now, s.resets, s.opened)
			}
			if dry != tc.wantDry {
				t.Fatalf("dry = %v, want %v (tokens %.1f)", dry, tc.wantDry, b.tokens)
			}
		})
	}
}

// guardedServer serves HTTP/2 on a loopback listener through Wrap, with
// handlers that call Settle and record whether their stream was still
// alive afterwards.
type guardedServer struct {
	addr    string
	alive   atomic.Int64 // handlers that found their stream alive after Settle
	started atomic.Int64
	abused  atomic.Int64
}

func startGuarded(t *testing.T) *guardedServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &guardedServer{addr: ln.Addr().String()}
	srv := &http2.Server{MaxConcurrentStreams: 1000}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.started.Add(1)
		FromContext(r.Context()).Settle(r.Context(), time.Second)
		if r.Context().Err() == nil {
			g.alive.Add(1)
		}
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				gc := Wrap(c, Limit{}, func() { g.abused.Add(1) })
				srv.ServeConn(gc, &http2.ServeConnOpts{Context: NewContext(context.Background(), gc), Handler: h})
			}()
		}
	}()
	return g
}

// rawClient writes frames; each flush is one write.
type rawClient struct {
	c    net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	next uint32
}

func dialRaw(t *testing.T, addr string) *rawClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{c: c, bw: bufio.NewWriter(c), next: 1}
	rc.fr = http2.NewFramer(rc.bw, c)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	rc.bw.WriteString(ClientPreface)
	rc.fr.WriteSettings()
	return rc
}

func (rc *rawClient) open() uint32 {
	rc.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	id := rc.next
	rc.next += 2
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	return id
}

// drain reads frames until the connection ends, and reports the GOAWAY
// error code seen, if any.
func (rc *rawClient) drain() (code http2.ErrCode, sawGoAway bool) {
	fr := http2.NewFramer(io.Discard, rc.c)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return code, sawGoAway
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			code, sawGoAway = ga.ErrCode, true
		}
	}
}

// A client that cancels a third of its streams, as fast as it can while
// keeping within the server's concurrency limit, is not abusive: the
// connection stays open.
func TestGuardToleratesCancels(t *testing.T) {
	g := startGuarded(t)
	rc := dialRaw(t, g.addr)
	const window = 50 // streams in flight at most
	var (
		mu       sync.Mutex
		finished = map[uint32]bool{}
		progress = make(chan struct{}, 1)
		ended    = make(chan error, 1)
		pong     = make(chan struct{})
	)
	finish := func(id uint32) {
		mu.Lock()
		finished[id] = true
		mu.Unlock()
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	go func() {
		fr := http2.NewFramer(io.Discard, rc.c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				ended <- err
				return
			}
			switch f := f.(type) {
			case *http2.HeadersFrame:
				if f.StreamEnded() {
					finish(f.StreamID)
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					finish(f.StreamID)
				}
			case *http2.RSTStreamFrame:
				ended <- fmt.Errorf("server reset stream %d: %v", f.StreamID, f.ErrCode)
				return
			case *http2.GoAwayFrame:
				ended <- fmt.Errorf("GOAWAY %v (guard found abuse %d times)", f.ErrCode, g.abused.Load())
				return
			case *http2.PingFrame:
				if f.IsAck() {
					close(pong)
				}
			}
		}
	}()
	rc.c.SetDeadline(time.Now().Add(30 * time.Second))
	for i := range 3000 {
		for {
			mu.Lock()
			inFlight := i - len(finished)
			mu.Unlock()
			if inFlight < window {
				break
			}
			select {
			case <-progress:
			case err := <-ended:
				t.Fatalf("after %d streams: %v", i, err)
			}
		}
		id := rc.open()
		if i%3 == 0 {
			rc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			finish(id)
		}
		if err := rc.bw.Flush(); err != nil {
			t.Fatalf("after %d streams: %v", i, err)
		}
	}
	// A PING answered proves the connection is still served.
	rc.fr.WritePing(false, [8]byte{1})
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pong:
	case err := <-ended:
		t.Fatal(err)
	}
	if g.abused.Load() != 0 {
		t.Fatal("connection reported abusive")
	}
}

// Streams reset in the same write that opened them are seen dead by
// their handlers after Settle; the flood ends in GOAWAY
// ENHANCE_YOUR_CALM.
func TestGuardRapidReset(t *testing.T) {
	g := startGuarded(t)
	rc := dialRaw(t, g.addr)
	sent := 0
	var err error
	for ; sent < 100000 && err == nil; sent++ {
		rc.fr.WriteRSTStream(rc.open(), http2.ErrCodeCancel)
		err = rc.bw.Flush()
	}
	code, saw := rc.drain()
	if !saw || code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("after %d resets: GOAWAY seen %v, code %v; want ENHANCE_YOUR_CALM", sent, saw, code)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("writes ended with %v", err)
	}
	if g.abused.Load() != 1 {
		t.Fatalf("onAbuse called %d times", g.abused.Load())
	}
	if alive := g.alive.Load(); alive > 0 {
		t.Fatalf("%d of %d handlers (%d reset streams) found their stream alive after Settle", alive, g.started.Load(), sent)
	}
}
