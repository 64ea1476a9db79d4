package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// tcpTarget makes echo round trips: each worker owns a connection, writes
// Payload bytes and reads them back.
type tcpTarget struct {
	addr    string
	payload []byte
	dialer  net.Dialer
}

func newTCPTarget(cfg Config) (*tcpTarget, error) {
	return &tcpTarget{addr: cfg.Target, payload: bytes.Repeat([]byte("x"), cfg.Payload)}, nil
}

func (t *tcpTarget) requester(int) requester {
	return &tcpRequester{t: t, buf: make([]byte, len(t.payload))}
}

func (t *tcpTarget) close() {}

type tcpRequester struct {
	t    *tcpTarget
	c    net.Conn
	buf  []byte
	dead bool // the connection's deadline was forced by a cancellation
}

func (r *tcpRequester) close() {
	if r.c != nil {
		r.c.Close()
		r.c = nil
	}
}

func (r *tcpRequester) dial(ctx context.Context) error {
	if r.c != nil {
		return nil
	}
	c, err := r.t.dialer.DialContext(ctx, "tcp", r.t.addr)
	if err != nil {
		return err
	}
	r.c = c
	return nil
}

func (r *tcpRequester) preconnect(ctx context.Context) { _ = r.dial(ctx) }

func (r *tcpRequester) do(ctx context.Context) (int64, error) {
	if err := r.dial(ctx); err != nil {
		return 0, err
	}
	c := r.c
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	// Cancellation without a deadline (the caller giving up) must also
	// unblock the round trip.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	_, err := c.Write(r.t.payload)
	if err == nil {
		_, err = io.ReadFull(c, r.buf)
	}
	stop()
	if err != nil {
		r.close()
		return 0, err
	}
	if !bytes.Equal(r.buf, r.t.payload) {
		r.close() // out of step with the stream: start afresh
		return 0, badResponseError{"echo differs"}
	}
	return int64(len(r.buf)), nil
}

// runBulk measures bulk echo throughput: every worker owns a connection on
// which one goroutine writes Payload-sized chunks back to back while
// another reads the echo. A chunk counts as a request when its last byte
// has come back; its latency runs from the start of its write. Bytes
// echoed during the measured window make bytes_per_second.
func runBulk(ctx context.Context, cfg Config) (*Result, error) {
	// Connect before the clock starts; failures are retried (and counted)
	// by the workers.
	conns := make([]net.Conn, cfg.Concurrency)
	func() {
		pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		var wg sync.WaitGroup
		for i := range conns {
			wg.Go(func() {
				var d net.Dialer
				conns[i], _ = d.DialContext(pctx, "tcp", cfg.Target)
			})
		}
		wg.Wait()
	}()

	clock := cfg.Clock
	start := clock.Now()
	warmEnd := start.Add(cfg.Warmup)
	end := warmEnd.Add(cfg.Duration)
	runCtx, cancel := context.WithTimeout(ctx, end.Sub(clock.Now()))
	defer cancel()

	stats := newWorkerStats(cfg.Concurrency)
	ax := startAux(ctx, cfg, stats)
	chunk := bytes.Repeat([]byte("x"), cfg.Payload)
	var wg sync.WaitGroup
	for i, st := range stats {
		wg.Go(func() {
			var d net.Dialer
			c := conns[i]
			for runCtx.Err() == nil {
				var err error
				if c == nil {
					c, err = d.DialContext(runCtx, "tcp", cfg.Target)
				}
				if err == nil {
					err = bulkConn(runCtx, cfg, c, chunk, st, warmEnd, end)
					c = nil // bulkConn closed it
				}
				if err == nil || runCtx.Err() != nil {
					return
				}
				now := clock.Now()
				st.live.Add(1)
				st.liveErr.Add(1)
				if !now.Before(warmEnd) && now.Before(end) {
					st.reqs++
					st.addErr(classify(nil, err))
				}
				// Do not spin on a target that is down.
				tm := time.NewTimer(50 * time.Millisecond)
				select {
				case <-tm.C:
				case <-runCtx.Done():
					tm.Stop()
				}
			}
		})
	}
	wg.Wait()
	finished := clock.Now()
	ax.stop()
	for _, c := range conns {
		if c != nil {
			c.Close() // workers that never ran (ctx already done)
		}
	}

	r := newResult(cfg)
	if ctx.Err() == nil || finished.After(end) {
		finished = end
	}
	d := max(finished.Sub(warmEnd), 0)
	var h Histogram
	for _, st := range stats {
		h.Merge(&st.hist)
		r.Requests += st.reqs
		r.addBytes(st.bytes)
		for k, v := range st.errs {
			r.Errors[k] += v
			r.ErrorTotal += v
		}
	}
	r.finish(d, &h)
	ax.report(r)
	if d == 0 && ctx.Err() != nil {
		return r, fmt.Errorf("interrupted before the measured window: %w", ctx.Err())
	}
	return r, nil
}

// bulkConn runs the writer and reader of one connection until ctx ends or
// the connection fails. It returns nil if ctx ended first.
func bulkConn(ctx context.Context, cfg Config, c net.Conn, chunk []byte, st *workerStats, warmEnd, end time.Time) error {
	clock := cfg.Clock
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	// sent carries each chunk's write start time to the reader; its
	// capacity bounds the chunks in flight.
	sent := make(chan time.Time, 256)
	werr := make(chan error, 1)
	go func() {
		defer close(sent)
		for ctx.Err() == nil {
			select {
			case sent <- clock.Now():
			case <-ctx.Done():
				werr <- nil
				return
			}
			if _, err := c.Write(chunk); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()

	buf := make([]byte, 64<<10)
	size := int64(len(chunk))
	var got int64 // bytes of the current chunk received
	var rerr error
	for {
		n, err := c.Read(buf)
		if n > 0 {
			now := clock.Now()
			inWindow := !now.Before(warmEnd) && !now.After(end)
			if inWindow {
				st.bytes += int64(n)
			}
			got += int64(n)
			for got >= size {
				got -= size
				t0, ok := <-sent
				if !ok {
					break
				}
				st.live.Add(1)
				if inWindow && !t0.Before(warmEnd) {
					st.reqs++
					st.hist.Record(now.Sub(t0))
				}
			}
		}
		if err != nil {
			rerr = err
			break
		}
	}
	c.Close() // unblock the writer
	for range sent {
	}
	writeErr := <-werr
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(rerr, io.EOF) {
		if writeErr != nil {
			return writeErr
		}
		return fmt.Errorf("target closed the connection: %w", io.ErrUnexpectedEOF)
	}
	return rerr
}
