package h2guard

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Limit is the reset budget of one connection, a token bucket: it holds
// up to Burst tokens, gains PerSecond tokens a second and PerStream
// tokens for every stream the client opens; every stream the client
// resets, and every stream the server resets because of what the client
// sent, takes one. A connection whose bucket runs dry is abusive.
//
// A client that opens streams and cancels a few of them never runs dry;
// one that resets (or provokes a reset of) more than half the streams it
// opens, faster than PerSecond, does, within Burst / (rate - PerSecond)
// seconds: at 10,000 resets a second, in about 40 ms with the defaults.
type Limit struct {
	Burst     float64 // default 200
	PerSecond float64 // default 100
	PerStream float64 // default 0.5
}

// DefaultLimit is what a zero field of Limit stands for.
var DefaultLimit = Limit{Burst: 200, PerSecond: 100, PerStream: 0.5}

func (l Limit) withDefaults() Limit {
	if l.Burst <= 0 {
		l.Burst = DefaultLimit.Burst
	}
	if l.PerSecond <= 0 {
		l.PerSecond = DefaultLimit.PerSecond
	}
	if l.PerStream <= 0 {
		l.PerStream = DefaultLimit.PerStream
	}
	return l
}

// ErrAbusive is returned by Read once a connection has been found
// abusive; the server then closes it.
var ErrAbusive = errors.New("h2guard: stream resets at an abusive rate")

// ReadAhead is the most the guard reads from the client at once: the
// streams opened in one read earn their tokens together.
const ReadAhead = 16 << 10

// goAwayTimeout bounds writing the GOAWAY to a client that may not read.
const goAwayTimeout = 250 * time.Millisecond

// Conn wraps the connection of an HTTP/2 server: it reads ahead what the
// client sends into its own buffer (so it sees frames before the server
// does), counts resets both ways, and closes the connection with GOAWAY
// ENHANCE_YOUR_CALM when the budget runs dry.
type Conn struct {
	net.Conn
	onAbuse func()

	// Read side: used only by the server's reading goroutine, except
	// that the counters shared with Settle are under mu.
	rbuf    []byte
	pending []byte // read ahead, not yet handed to the server
	in      splitter
	handed  splitter // what the server has been given
	resets  int      // in the batch being parsed
	opened  int
	newest  atomic.Uint32 // highest client stream ID seen

	mu        sync.Mutex
	arrived   uint64 // complete frames read ahead
	processed uint64 // frames the server has finished with
	wake      chan struct{}
	bucket    bucket

	// Write side, under wmu: what the server has written, to count its
	// resets and to know where a frame may be inserted.
	wmu         sync.Mutex
	out         splitter
	serverReset int
	provokedAt  atomic.Int64 // unix nanoseconds of the last provoked reset

	abusive atomic.Bool
	once    sync.Once
}

// Wrap guards c, which an http2.Server is about to serve. onAbuse, if
// not nil, is called once if the connection is closed for abuse.
func Wrap(c net.Conn, lim Limit, onAbuse func()) *Conn {
	lim = lim.withDefaults()
	return &Conn{
		Conn:    c,
		onAbuse: onAbuse,
		rbuf:    make([]byte, ReadAhead),
		in:      newSplitter(true),
		handed:  newSplitter(true),
		out:     newSplitter(false),
		bucket:  bucket{lim: lim, tokens: lim.Burst, last: time.Now()},
	}
}

// NetConn returns the wrapped connection (for socket options).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Read hands the server what was read ahead, reading more when that is
// used up.
func (c *Conn) Read(p []byte) (int, error) {
	if c.abusive.Load() {
		return 0, ErrAbusive
	}
	// The server asks for more only when it has dealt with everything it
	// was given before (x/net's server reads one frame, hands it to its
	// serve loop and waits for that to finish before reading the next).
	c.mu.Lock()
	if c.processed < c.handed.frames {
		c.processed = c.handed.frames
		if c.wake != nil {
			close(c.wake)
			c.wake = nil
		}
	}
	c.mu.Unlock()

	if len(c.pending) == 0 {
		// An error that comes with data is dropped: the connection
		// reports it again on the next read, after the data.
		n, err := c.Conn.Read(c.rbuf)
		if n == 0 {
			return 0, err
		}
		c.pending = c.rbuf[:n]
		c.resets, c.opened = 0, 0
		c.in.feed(c.pending, c.countIncoming)
		c.mu.Lock()
		c.arrived = c.in.frames
		dry := c.bucket.spend(time.Now(), c.resets, c.opened)
		c.mu.Unlock()
		if dry {
			c.abort()
			return 0, ErrAbusive
		}
	}
	n := copy(p, c.pending)
	c.handed.feed(c.pending[:n], nil)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *Conn) countIncoming(f Frame) {
	switch f.Type {
	case frameRSTStream:
		c.resets++
	case frameHeaders:
		// Client streams are odd and increase; anything else is the
		// server's to refuse.
		if f.StreamID > c.newest.Load() && f.StreamID%2 == 1 {
			c.newest.Store(f.StreamID)
			c.opened++
		}
	}
}

// Write passes what the server writes through, counting the resets the
// server sends because of something the client did.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.Conn.Write(p)
	c.serverReset = 0
	c.out.feed(p[:n], c.countOutgoing)
	if c.abusive.Load() {
		// An abort waits for the end of the server's frame: its
		// buffered writer cuts frames across writes.
		if c.out.atBoundary() {
			c.finishLocked(true)
		}
		return n, err
	}
	if c.serverReset > 0 {
		c.mu.Lock()
		dry := c.bucket.spend(time.Now(), c.serverReset, 0)
		c.mu.Unlock()
		if dry {
			// The read side may be blocked in the socket: close from
			// here.
			c.abortLocked()
		}
	}
	return n, err
}

func (c *Conn) countOutgoing(f Frame) {
	if f.Type != frameRSTStream {
		return
	}
	switch f.ErrorCode() {
	case codeNo, codeCancel, codeInternal:
		// The server's own doing: a handler that did not read the
		// whole request body, or one that failed.
	default:
		// PROTOCOL_ERROR, STREAM_CLOSED, FLOW_CONTROL_ERROR,
		// REFUSED_STREAM, ...: the client provoked it.
		c.serverReset++
		c.provokedAt.Store(time.Now().UnixNano())
	}
}

// abort closes the connection with GOAWAY ENHANCE_YOUR_CALM.
func (c *Conn) abort() {
	c.Conn.SetWriteDeadline(time.Now().Add(goAwayTimeout))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.abortLocked()
}

// abortLocked marks the connection abusive (Read fails from now on and
// Close is left to us) and sends the GOAWAY and closes at once if the
// server's output is between two frames. Otherwise the server is in the
// middle of writing a frame, which its next write completes: Write
// finishes the abort then, or a timer does without the GOAWAY.
func (c *Conn) abortLocked() {
	if c.abusive.Swap(true) {
		return
	}
	if c.onAbuse != nil {
		c.onAbuse()
	}
	if c.out.atBoundary() {
		c.finishLocked(true)
		return
	}
	time.AfterFunc(goAwayTimeout, func() {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		c.finishLocked(c.out.atBoundary())
	})
}

// finishLocked sends the GOAWAY if asked and closes, once.
func (c *Conn) finishLocked(goAway bool) {
	c.once.Do(func() {
		c.Conn.SetWriteDeadline(time.Now().Add(goAwayTimeout))
		if goAway {
			// The newest stream the client opened: nothing later was
			// processed.
			c.Conn.Write(goAwayFrame(c.newest.Load(), codeEnhanceYourCal))
		}
		c.lingeringClose()
		c.mu.Lock()
		if c.wake != nil {
			close(c.wake)
			c.wake = nil
		}
		c.mu.Unlock()
	})
}

// suspectFor is how long after the server was made to reset a stream
// the connection stays suspect (see Settle).
const suspectFor = 100 * time.Millisecond

// lingerTime bounds how long an abusive connection is drained after
// the GOAWAY before it is closed.
const lingerTime = 250 * time.Millisecond

// lingeringClose sends FIN after the GOAWAY and reads (and drops) what
// the client still sends for a moment before closing. Closing a socket
// with unread input makes the kernel send RST, and a client that
// receives RST loses what it had not read yet, the GOAWAY included.
func (c *Conn) lingeringClose() {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	go func() {
		c.Conn.SetReadDeadline(time.Now().Add(lingerTime))
		io.Copy(io.Discard, io.LimitReader(c.Conn, 1<<20))
		c.Conn.Close()
	}()
}

// Close closes the connection, unless it is being closed for abuse, in
// which case that finishes on its own within lingerTime.
func (c *Conn) Close() error {
	if c.abusive.Load() {
		return nil
	}
	return c.Conn.Close()
}

// Settle waits until the server has dealt with every frame that had
// arrived from the client when Settle was called, or until ctx ends, the
// connection is closed or maxWait passes. A handler calls it before
// starting work elsewhere: if its stream was reset in the same burst as
// it was opened (Rapid Reset), its context is cancelled by then.
//
// A reset the client provokes (MadeYouReset) cancels the stream only
// once the server has written its RST_STREAM, which can wait behind a
// write in progress. So on a connection that provoked a reset in the
// last suspectFor, Settle also waits out maxWait unless ctx ends first:
// the price of a misbehaving client, paid only by its own connection.
func (c *Conn) Settle(ctx context.Context, maxWait time.Duration) {
	suspect := func() bool { return time.Since(time.Unix(0, c.provokedAt.Load())) < suspectFor }
	c.mu.Lock()
	target := c.arrived
	if c.processed >= target && !suspect() {
		c.mu.Unlock()
		return // the common case: nothing to wait for
	}
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	for c.processed < target && !c.abusive.Load() {
		if c.wake == nil {
			c.wake = make(chan struct{})
		}
		wake := c.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	if suspect() {
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
	}
}

// bucket is the reset budget.
type bucket struct {
	lim    Limit
	tokens float64
	last   time.Time
}

// spend refills the bucket for the time passed and the streams opened,
// takes the resets, and reports whether it ran dry. Called under Conn.mu.
func (b *bucket) spend(now time.Time, resets, opened int) bool {
	b.tokens += now.Sub(b.last).Seconds()*b.lim.PerSecond + float64(opened)*b.lim.PerStream
	b.last = now
	b.tokens = min(b.tokens, b.lim.Burst) - float64(resets)
	return b.tokens < 0
}

type ctxKey struct{}

// NewContext returns ctx carrying c, for the handlers of c's requests.
func NewContext(ctx context.Context, c *Conn) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// FromContext returns the guard of the connection a request came on, or
// nil (HTTP/1).
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(ctxKey{}).(*Conn)
	return c
}

// SettleWait bounds how long a handler waits in StreamReset for the
// HTTP/2 server to process frames that arrived with its request; the
// server normally needs microseconds.
const SettleWait = 50 * time.Millisecond

// StreamReset settles the request's connection (see Settle) and reports
// whether the request's stream was reset meanwhile, so the handler must
// not start work upstream for it. Requests not served through a guard
// (HTTP/1, HTTP/3) are settled already.
func StreamReset(ctx context.Context) bool {
	c := FromContext(ctx)
	if c == nil {
		return false
	}
	c.Settle(ctx, SettleWait)
	return ctx.Err() != nil
}
