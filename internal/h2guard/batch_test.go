package h2guard

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// gateConn is a net.Conn whose writes wait for a release (or the write
// deadline) and are recorded: it stands for a socket whose send buffer
// is full until the test says otherwise.
type gateConn struct {
	net.Conn // nil: only what batchConn calls is implemented
	release  chan struct{}
	started  chan []byte // each write as it starts

	expired   chan struct{} // closed when a write deadline passes
	expire    sync.Once
	mu        sync.Mutex
	deadlines []time.Time // every write deadline set
	writes    [][]byte
	failWith  error
	closed    bool
	shutWr    bool
}

func newGateConn() *gateConn {
	return &gateConn{release: make(chan struct{}), started: make(chan []byte, 100), expired: make(chan struct{})}
}

func (g *gateConn) Write(p []byte) (int, error) {
	g.started <- bytes.Clone(p)
	select {
	case <-g.release:
	case <-g.expired:
		return 0, os.ErrDeadlineExceeded
	}
	g.mu.Lock()
	fail := g.failWith
	g.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	g.mu.Lock()
	g.writes = append(g.writes, bytes.Clone(p))
	g.mu.Unlock()
	return len(p), nil
}

// SetWriteDeadline makes writes in progress and later ones fail at t
// (the tests never move a deadline back).
func (g *gateConn) SetWriteDeadline(t time.Time) error {
	g.mu.Lock()
	g.deadlines = append(g.deadlines, t)
	g.mu.Unlock()
	if !t.IsZero() {
		time.AfterFunc(time.Until(t), func() { g.expire.Do(func() { close(g.expired) }) })
	}
	return nil
}

func (g *gateConn) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}

func (g *gateConn) CloseWrite() error {
	g.mu.Lock()
	g.shutWr = true
	g.mu.Unlock()
	return nil
}

func (g *gateConn) written() [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writes
}

// queued waits until b's queue holds n bytes.
func queued(t *testing.T, b *batchConn, n int) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queue) != n {
		b.mu.Unlock()
		time.Sleep(time.Millisecond)
		b.mu.Lock()
	}
}

// TestBatchWritesCoalesces: what is written while a write to the socket
// is in progress goes out in the next write, all of it, in order.
func TestBatchWritesCoalesces(t *testing.T) {
	g := newGateConn()
	b := BatchWrites(g).(*batchConn)
	if _, err := b.Write([]byte("headers|")); err != nil {
		t.Fatal(err)
	}
	if got := <-g.started; string(got) != "headers|" {
		t.Fatalf("first write to the socket %q", got)
	}
	// The socket write is blocked; these only queue.
	for _, s := range []string{"data|", "trailers|", "ping-ack|"} {
		if n, err := b.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v while the socket is busy", s, n, err)
		}
	}
	g.release <- struct{}{}
	if got := <-g.started; string(got) != "data|trailers|ping-ack|" {
		t.Fatalf("second write to the socket %q, want the three queued writes together", got)
	}
	g.release <- struct{}{}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"headers|", "data|trailers|ping-ack|"}
	got := g.written()
	if len(got) != len(want) {
		t.Fatalf("socket writes %q, want %q", got, want)
	}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Fatalf("socket writes %q, want %q", got, want)
		}
	}
}

// TestBatchWritesBackPressure: Write blocks once maxQueued bytes wait
// for a socket that does not drain, and goes on when it does.
func TestBatchWritesBackPressure(t *testing.T) {
	g := newGateConn()
	b := BatchWrites(g).(*batchConn)
	b.Write([]byte("x"))
	<-g.started // the flusher is stuck in the socket
	chunk := make([]byte, maxQueued/4)
	for range 4 {
		b.Write(chunk) // fills the queue to maxQueued
	}
	wrote := make(chan error, 1)
	go func() { _, err := b.Write([]byte("over")); wrote <- err }()
	select {
	case err := <-wrote:
		t.Fatalf("Write beyond maxQueued returned (%v) while the socket was stuck", err)
	case <-time.After(50 * time.Millisecond):
		// Still blocked: the bound holds. (The wait only shows a Write
		// that does not block; it cannot make this test pass wrongly.)
	}
	g.release <- struct{}{} // "x"
	<-g.started             // the full queue
	g.release <- struct{}{}
	if err := <-wrote; err != nil {
		t.Fatalf("Write after the socket drained: %v", err)
	}
	<-g.started // "over"
	g.release <- struct{}{}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, w := range g.written() {
		n += len(w)
	}
	if want := 1 + maxQueued + len("over"); n != want {
		t.Fatalf("%d bytes reached the socket, want %d", n, want)
	}
}

// TestBatchWritesError: a failed socket write fails the next Write and
// Close still returns.
func TestBatchWritesError(t *testing.T) {
	g := newGateConn()
	broken := errors.New("connection reset by peer")
	g.failWith = broken
	b := BatchWrites(g).(*batchConn)
	if _, err := b.Write([]byte("a")); err != nil {
		t.Fatalf("first Write: %v (it only queues)", err)
	}
	<-g.started
	g.release <- struct{}{}
	b.mu.Lock()
	for b.scheduled {
		b.cond.Wait()
	}
	b.mu.Unlock()
	if _, err := b.Write([]byte("b")); !errors.Is(err, broken) {
		t.Fatalf("Write after the socket failed: %v, want %v", err, broken)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Write([]byte("c")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestBatchWritesCloseFlushes: Close and CloseWrite send what is queued
// before they act, and give up on a socket that does not drain after
// flushOnClose; the flusher has returned when Close does.
func TestBatchWritesCloseFlushes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drain bool // the socket takes the queue
		shut  func(b *batchConn) error
	}{
		{"Close, draining", true, (*batchConn).Close},
		{"CloseWrite, draining", true, (*batchConn).CloseWrite},
		{"Close, stuck", false, (*batchConn).Close},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGateConn()
			b := BatchWrites(g).(*batchConn)
			b.Write([]byte("goaway"))
			<-g.started
			b.Write([]byte("last"))
			queued(t, b, len("last"))
			if tc.drain {
				go func() {
					g.release <- struct{}{}
					<-g.started
					g.release <- struct{}{}
				}()
			}
			start := time.Now()
			if err := tc.shut(b); err != nil {
				t.Fatal(err)
			}
			var got []byte
			for _, w := range g.written() {
				got = append(got, w...)
			}
			g.mu.Lock()
			closed, shutWr := g.closed, g.shutWr
			g.mu.Unlock()
			switch {
			case tc.drain && string(got) != "goawaylast":
				t.Fatalf("socket got %q before the close, want everything queued", got)
			case !tc.drain && time.Since(start) < flushOnClose:
				t.Fatalf("Close of a stuck socket returned after %v, before flushOnClose", time.Since(start))
			case !tc.drain && len(got) != 0:
				t.Fatalf("stuck socket got %q", got)
			}
			if tc.name == "CloseWrite, draining" {
				if !shutWr || closed {
					t.Fatalf("CloseWrite: write side shut %v, closed %v", shutWr, closed)
				}
				b.Close()
			} else if !closed {
				t.Fatal("Close did not close the socket")
			}
			select {
			case <-b.done:
			default:
				t.Fatal("the flusher is still running after Close")
			}
		})
	}
}

// TestBatchWritesTCP: many writers over a real loopback connection, the
// bytes arrive complete and each writer's in its order.
func TestBatchWritesTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		all, _ := io.ReadAll(c)
		got <- all
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := BatchWrites(c)
	const writers, each = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				// One byte for the writer, one for its sequence.
				if _, err := b.Write([]byte{byte(w), byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	all := <-got
	if len(all) != writers*each*2 {
		t.Fatalf("received %d bytes, want %d", len(all), writers*each*2)
	}
	next := make([]int, writers)
	for i := 0; i < len(all); i += 2 {
		w, seq := all[i], all[i+1]
		if int(seq) != next[w]%256 {
			t.Fatalf("writer %d: got sequence byte %d, want %d", w, seq, next[w]%256)
		}
		next[w]++
	}
}

// TestBatchWritesDeadline: the write deadline bounds Write as it bounds
// a socket's, and a close never waits past it for the queue.
func TestBatchWritesDeadline(t *testing.T) {
	t.Run("passed", func(t *testing.T) {
		g := newGateConn()
		b := BatchWrites(g).(*batchConn)
		defer b.Close()
		b.SetWriteDeadline(time.Now().Add(-time.Second))
		if _, err := b.Write([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write after the deadline: %v, want %v", err, os.ErrDeadlineExceeded)
		}
	})
	t.Run("blocked for room", func(t *testing.T) {
		g := newGateConn()
		b := BatchWrites(g).(*batchConn)
		defer b.Close()
		b.Write([]byte("x"))
		<-g.started // the flusher is stuck in the socket
		b.Write(make([]byte, maxQueued))
		wrote := make(chan error, 1)
		go func() { _, err := b.Write([]byte("over")); wrote <- err }()
		// The deadline passing is the event: the socket write fails with
		// it and so does the Write waiting for room.
		b.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
		if err := <-wrote; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write waiting for room past the deadline: %v, want %v", err, os.ErrDeadlineExceeded)
		}
	})
	t.Run("close keeps an earlier deadline", func(t *testing.T) {
		g := newGateConn()
		b := BatchWrites(g).(*batchConn)
		b.Write([]byte("goaway"))
		<-g.started
		// What h2guard's abort does before it writes the GOAWAY and
		// closes the write side: the drain must not extend it.
		soon := time.Now().Add(50 * time.Millisecond)
		b.SetWriteDeadline(soon)
		if err := b.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		g.mu.Lock()
		got := slices.Clone(g.deadlines)
		g.mu.Unlock()
		if len(got) != 1 || !got[0].Equal(soon) {
			t.Fatalf("write deadlines set on the socket %v, want only %v", got, soon)
		}
		b.Close()
	})
}
