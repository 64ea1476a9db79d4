package h2guard

import (
	"net"
	"os"
	"sync"
	"time"
)

// BatchWrites returns c with writes that return once the bytes are
// queued: a goroutine of its own writes the queue to c, everything that
// was queued meanwhile in one system call.
//
// x/net's HTTP/2 server flushes its buffer whenever its queue of frames
// runs empty, which for a handler writing a response is after every
// frame: a unary gRPC response (HEADERS, DATA, trailing HEADERS) took
// three write calls, each from a goroutine started for it, and woke the
// client three times (docs/benchmarks.md, "gRPC unary"). Returning at
// once lets the server's loop take the handler's next frame while the
// previous flush is still being written, so they go out together. The
// writer does not yield before it takes the queue (the first version
// did, to let the server loop and the handler readied with it queue
// more): under load the yield cost more client sidecar CPU than it
// saved (docs/benchmarks.md, "gRPC write batching again").
//
// Back-pressure is kept: Write blocks while more than maxQueued bytes
// are queued, so a client that stops reading its socket stops the server
// as before, holding at most maxQueued more bytes here (a client that
// only stops granting HTTP/2 flow-control window is the server's to
// stall, stream by stream, as before). An error writing to c is returned
// by the next Write; the data queued with it is dropped, as the kernel
// would drop unsent data of a failed connection.
//
// Write deadlines (SetWriteDeadline, SetDeadline) bound the writes to c
// and Write itself: a Write once the deadline has passed, or one blocked
// for room when it passes, fails with os.ErrDeadlineExceeded, and a
// write to c that times out fails the connection for good (what was
// written of the batch is unknown to the writer, so it cannot go on).
// Close and CloseWrite send what is queued first, within flushOnClose or
// the write deadline, whichever is sooner.
func BatchWrites(c net.Conn) net.Conn {
	b := &batchConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	b.cond.L = &b.mu
	go b.flusher()
	return b
}

const (
	// maxQueued bounds what Write queues before it blocks: a little
	// more than x/net's write buffer (4 KiB), so a response's frames and
	// those of a few other streams fit, but a stalled client stops the
	// server about as soon as it did without batching.
	maxQueued = 64 << 10
	// keepQueueBuffer is the largest queue buffer kept for the next
	// batch; a larger one is dropped once written, so an idle
	// connection holds no more than this.
	keepQueueBuffer = 16 << 10
	// flushOnClose bounds how long Close and CloseWrite wait for the
	// queue to be written to a client that does not read.
	flushOnClose = time.Second
)

type batchConn struct {
	net.Conn

	mu        sync.Mutex
	cond      sync.Cond // broadcast when a batch has been written
	queue     []byte    // written by the server, not yet handed to the flusher
	spare     []byte    // the buffer of the previous batch, for reuse
	scheduled bool      // the flusher has been kicked and not yet found the queue empty
	err       error     // from writing to Conn; sticky
	closed    bool
	deadline  time.Time // the write deadline set on Conn, zero if none
	expiry    *time.Timer

	kick chan struct{} // the queue has bytes; closed by Close
	done chan struct{} // closed when the flusher returns
}

func (b *batchConn) NetConn() net.Conn { return b.Conn }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queue) >= maxQueued && b.err == nil && !b.closed && !b.expiredLocked() {
		b.cond.Wait()
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closed:
		return 0, net.ErrClosed
	case b.expiredLocked():
		return 0, os.ErrDeadlineExceeded
	}
	b.queue = append(b.queue, p...)
	if !b.scheduled {
		b.scheduled = true
		b.kick <- struct{}{} // cannot block: only sent when not scheduled
	}
	return len(p), nil
}

// flusher writes the queue to Conn while there is one.
func (b *batchConn) flusher() {
	defer close(b.done)
	for range b.kick {
		for {
			b.mu.Lock()
			batch := b.queue
			b.queue = b.spare[:0]
			b.spare = nil
			b.cond.Broadcast() // writers waiting for room may queue again
			b.mu.Unlock()

			_, err := b.Conn.Write(batch)

			b.mu.Lock()
			if cap(batch) <= keepQueueBuffer {
				b.spare = batch
			}
			if err != nil && b.err == nil {
				b.err = err
			}
			more := len(b.queue) > 0 && b.err == nil
			if !more {
				b.scheduled = false
				if b.err != nil {
					b.queue, b.spare = nil, nil
				}
			}
			b.cond.Broadcast()
			b.mu.Unlock()
			if !more {
				break
			}
		}
	}
}

// drainLocked waits, under b.mu, until the queue is written or writing
// failed, at most flushOnClose.
func (b *batchConn) drainLocked() {
	if !b.scheduled {
		return
	}
	if d := time.Now().Add(flushOnClose); b.deadline.IsZero() || d.Before(b.deadline) {
		b.setDeadlineLocked(d)
	}
	for b.scheduled {
		b.cond.Wait()
	}
}

// SetWriteDeadline sets the deadline of the writes to Conn and of Write.
func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.setDeadlineLocked(t)
}

// SetDeadline sets the read deadline of Conn and the write deadline as
// SetWriteDeadline does.
func (b *batchConn) SetDeadline(t time.Time) error {
	if err := b.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return b.SetWriteDeadline(t)
}

func (b *batchConn) setDeadlineLocked(t time.Time) error {
	b.deadline = t
	if b.expiry != nil {
		b.expiry.Stop()
		b.expiry = nil
	}
	if !t.IsZero() {
		// Wakes a Write waiting for room once the deadline passes.
		b.expiry = time.AfterFunc(time.Until(t), func() {
			b.mu.Lock()
			b.cond.Broadcast()
			b.mu.Unlock()
		})
	}
	b.cond.Broadcast() // a deadline in the past fails waiting writes now
	return b.Conn.SetWriteDeadline(t)
}

// expiredLocked reports whether the write deadline has passed.
func (b *batchConn) expiredLocked() bool {
	return !b.deadline.IsZero() && !time.Now().Before(b.deadline)
}

// Close writes what is queued (see flushOnClose), stops the flusher and
// closes the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.Conn.Close()
	}
	b.closed = true
	b.drainLocked()
	if b.expiry != nil {
		b.expiry.Stop()
	}
	close(b.kick)
	b.cond.Broadcast() // writers blocked on a full queue
	b.mu.Unlock()
	err := b.Conn.Close()
	<-b.done
	return err
}

// CloseWrite writes what is queued and shuts the connection's write
// side, if it has one.
func (b *batchConn) CloseWrite() error {
	b.mu.Lock()
	b.drainLocked()
	b.mu.Unlock()
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
