package netlab

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// QueuePackets bounds each direction of an emulated link: packets beyond
// it are dropped (drop-tail). At 1500-byte packets it allows about
// 150 MB/s at 20 ms of delay.
const QueuePackets = 2048

// bufSize holds one packet of the 1500-byte TUN MTU.
const bufSize = 2048

var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

// EmuStats counts what one direction of an emulated link did.
type EmuStats struct {
	Forwarded  uint64 // packets delivered to the far side
	Lost       uint64 // dropped by the emulator's random loss
	QueueDrops uint64 // dropped because the queue was full
}

type tunResult struct {
	f   *os.File
	err error
}

func (r tunResult) close() {
	if r.f != nil {
		r.f.Close()
	}
}

// openInNS creates TUN device ifc inside namespace ns.
func openInNS(l *Lab, ns, ifc string) tunResult {
	var r tunResult
	r.err = l.Do(ns, func() error {
		f, err := openTUN(ifc)
		if err != nil {
			return err
		}
		disableIPv6(ifc)
		r.f = f
		return nil
	})
	return r
}

// emulator carries packets between two TUN devices, one direction per
// pair of goroutines.
type emulator struct {
	a, b   *os.File
	ab, ba *direction
	done   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

type packet struct {
	buf *[bufSize]byte
	n   int
	due time.Time
}

// direction is one half of an emulated link: in → queue → out.
type direction struct {
	in, out  *os.File
	delay    atomic.Int64  // nanoseconds
	jitter   atomic.Int64  // nanoseconds, uniform in [0, jitter)
	loss     atomic.Uint64 // float64 bits: drop probability 0..1
	q        chan packet
	done     <-chan struct{}
	fwd      atomic.Uint64
	lost     atomic.Uint64
	qdrops   atomic.Uint64
	writeErr atomic.Uint64
}

func startEmulator(a, b *os.File, delay time.Duration, lossPct float64) *emulator {
	e := &emulator{a: a, b: b, done: make(chan struct{})}
	e.ab = &direction{in: a, out: b, q: make(chan packet, QueuePackets), done: e.done}
	e.ba = &direction{in: b, out: a, q: make(chan packet, QueuePackets), done: e.done}
	for _, d := range []*direction{e.ab, e.ba} {
		d.set(delay, 0, lossPct)
		e.wg.Add(2)
		go func() { defer e.wg.Done(); d.read() }()
		go func() { defer e.wg.Done(); d.write() }()
	}
	return e
}

func (d *direction) set(delay, jitter time.Duration, lossPct float64) {
	d.delay.Store(int64(delay))
	d.jitter.Store(int64(jitter))
	d.loss.Store(math.Float64bits(lossPct / 100))
}

// close stops the goroutines and closes both TUN devices, which deletes
// them. It waits until every goroutine has returned.
func (e *emulator) close() {
	e.once.Do(func() {
		close(e.done)
		e.a.Close() // unblocks the readers
		e.b.Close()
		e.wg.Wait()
		for _, d := range []*direction{e.ab, e.ba} {
			for len(d.q) > 0 {
				bufPool.Put((<-d.q).buf)
			}
		}
	})
}

// read takes packets from the source device, applies loss, stamps each
// with its due time and queues it; a full queue drops the packet.
func (d *direction) read() {
	var last time.Time
	for {
		buf := bufPool.Get().(*[bufSize]byte)
		n, err := d.in.Read(buf[:])
		if err != nil {
			bufPool.Put(buf)
			if errors.Is(err, os.ErrClosed) {
				return
			}
			select {
			case <-d.done:
				return
			default:
			}
			// A transient error (the device going down): back off a
			// little rather than spin.
			time.Sleep(time.Millisecond)
			continue
		}
		if p := math.Float64frombits(d.loss.Load()); p > 0 && rand.Float64() < p {
			d.lost.Add(1)
			bufPool.Put(buf)
			continue
		}
		wait := time.Duration(d.delay.Load())
		if j := d.jitter.Load(); j > 0 {
			wait += time.Duration(rand.Int64N(j))
		}
		due := time.Now().Add(wait)
		if due.Before(last) {
			due = last // never overtake the previous packet
		}
		last = due
		select {
		case d.q <- packet{buf: buf, n: n, due: due}:
		default:
			d.qdrops.Add(1)
			bufPool.Put(buf)
		}
	}
}

// write delivers queued packets to the other device when they are due.
func (d *direction) write() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p packet
		select {
		case p = <-d.q:
		case <-d.done:
			return
		}
		if wait := time.Until(p.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-d.done:
				bufPool.Put(p.buf)
				return
			}
		}
		if _, err := d.out.Write(p.buf[:p.n]); err != nil {
			d.writeErr.Add(1)
		} else {
			d.fwd.Add(1)
		}
		bufPool.Put(p.buf)
	}
}

func (d *direction) stats() EmuStats {
	return EmuStats{Forwarded: d.fwd.Load(), Lost: d.lost.Load(), QueueDrops: d.qdrops.Load()}
}

var errNotEmulated = errors.New("netlab: not an emulated link (use Lab.DelayPair)")

// SetDelay changes the one-way delay of both directions of an emulated
// link, plus a uniform random jitter in [0, jitter) per packet. Packets
// are never reordered: one that would overtake its predecessor waits for
// it. Packets already queued keep their due time.
func (k *Link) SetDelay(delay, jitter time.Duration) error {
	if k.emu == nil {
		return errNotEmulated
	}
	if delay < 0 || jitter < 0 {
		return errors.New("netlab: negative delay or jitter")
	}
	for _, d := range []*direction{k.emu.ab, k.emu.ba} {
		d.delay.Store(int64(delay))
		d.jitter.Store(int64(jitter))
	}
	return nil
}

// SetEmuLoss changes the emulator's own random loss (per cent, each
// direction) on an emulated link. It is independent of [Link.SetLoss].
func (k *Link) SetEmuLoss(pct float64) error {
	if k.emu == nil {
		return errNotEmulated
	}
	if err := checkPct(pct); err != nil {
		return err
	}
	for _, d := range []*direction{k.emu.ab, k.emu.ba} {
		d.loss.Store(math.Float64bits(pct / 100))
	}
	return nil
}

// EmuStats returns the emulator's counters for A→B and B→A.
func (k *Link) EmuStats() (ab, ba EmuStats, err error) {
	if k.emu == nil {
		return ab, ba, errNotEmulated
	}
	return k.emu.ab.stats(), k.emu.ba.stats(), nil
}
