package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/transport"
)

// flowMesh is a client sidecar and a server sidecar in front of an h2c
// echo app ("h2") and an HTTP/1.1 echo app ("web"). Both apps count the
// requests that reach them, by path.
type flowMesh struct {
	server, client  *meshtest.Sidecar
	h2Bind, webBind string
	// webTunnelBind reaches "web" through an opaque tunnel: its HTTP is
	// parsed only by the inbound sidecar.
	webTunnelBind string
	hits          *pathCounter
}

// pathCounter counts requests per URL path, and response bytes the apps
// wrote.
type pathCounter struct {
	mu    sync.Mutex
	n     map[string]int
	bytes atomic.Int64
}

// countingWriter counts what a handler writes.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func (w countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (c *pathCounter) add(path string) {
	c.mu.Lock()
	c.n[path]++
	c.mu.Unlock()
}

func (c *pathCounter) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[path]
}

// countingApp is the echo app, counting requests by path and the bytes
// it writes in hits.
func countingApp(hits *pathCounter) http.Handler {
	h := echo.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.add(r.URL.Path)
		h.ServeHTTP(countingWriter{w, &hits.bytes}, r)
	})
}

func newFlowMesh(t *testing.T) *flowMesh {
	t.Helper()
	mesh := meshtest.New(t)
	m := &flowMesh{hits: &pathCounter{n: map[string]int{}}}
	h2app := mesh.HTTPApp("h2", meshtest.H2C, countingApp(m.hits))
	webApp := mesh.HTTPApp("web", meshtest.H1, countingApp(m.hits))
	// The liveness watch's 1 s default (transport.Limits.LivenessTimeout)
	// is not what these tests are about, and with -race on a loaded
	// machine it declared the live peer in this very process dead: the
	// client sidecar closed the QUIC connection with "peer unresponsive"
	// (0x51d3) and a well-behaved probe failed mid-body after 1.1-2.7 s
	// (h2c: RST_STREAM INTERNAL_ERROR; HTTP/1.1: unexpected EOF); 5 of
	// the 6 such failures seen came before any attack had started
	// (docs/benchmarks.md, "The stalled-reader test's INTERNAL_ERROR").
	// A connection that really went silent still fails the probes:
	// QUIC's idle timeout (5 s) closes it before the probe's own
	// timeout.
	lim := transport.Limits{LivenessTimeout: time.Until(testkit.HangGuard(t))}
	m.server = mesh.Start("server", meshtest.Spec{ID: echoID, Limits: lim, Routes: map[string]string{"h2": h2app.URL("h2c"), "web": webApp.URL("http")}})
	m.client = mesh.Start("client", meshtest.Spec{ID: clientID, Limits: lim, Binds: []meshtest.Bind{
		{Service: "h2"}, {Service: "web"}, {Name: "web tunnel", Service: "web", Opaque: true},
	}})
	m.h2Bind, m.webBind, m.webTunnelBind = m.client.Bind("h2"), m.client.Bind("web"), m.client.Bind("web tunnel")
	return m
}

// h2Raw is an HTTP/2 client written with the framer, for attacks a real
// client would never make: it never sends WINDOW_UPDATE, resets streams
// the moment it opens them, and so on. Frames are buffered until flush so
// a batch leaves in as few TCP segments as possible.
type h2Raw struct {
	conn net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	next uint32
}

func dialH2Raw(t *testing.T, addr string) *h2Raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := &h2Raw{conn: c, bw: bufio.NewWriterSize(c, 64<<10), next: 1}
	h.fr = http2.NewFramer(h.bw, c)
	h.enc = hpack.NewEncoder(&h.hbuf)
	h.bw.WriteString(http2.ClientPreface)
	// Default windows (64 KiB per stream and per connection) that are
	// never replenished.
	h.fr.WriteSettings()
	if err := h.flush(); err != nil {
		t.Fatal(err)
	}
	return h
}

// get queues a GET for path on a new stream and returns the stream ID.
// Errors are the connection's; flush reports them.
func (h *h2Raw) get(authority, path string) uint32 {
	h.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", path}} {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	id := h.next
	h.next += 2
	h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	return id
}

func (h *h2Raw) flush() error { return h.bw.Flush() }

// heapWatch samples the heap (objects, live or not) without stopping the
// world and records the peak. It cancels ctx as soon as the heap passes
// ceiling, so a broken build fails quickly instead of exhausting the
// shared machine's memory.
type heapWatch struct {
	peak   atomic.Uint64
	over   atomic.Bool
	cancel context.CancelCauseFunc
	done   chan struct{}
}

func watchHeap(ctx context.Context, ceiling uint64) (*heapWatch, context.Context) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &heapWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(s)
			v := s[0].Value.Uint64()
			if v > w.peak.Load() {
				w.peak.Store(v)
			}
			if v > ceiling {
				w.over.Store(true)
				cancel(fmt.Errorf("heap passed %d MiB, more than 4x the bound", v>>20))
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w, ctx
}

func (w *heapWatch) stop() { w.cancel(nil); <-w.done }

// liveHeap is the heap left after full collections: two, because
// buffers in a sync.Pool survive the first.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// prober is the well-behaved client: its own connections (h2c and
// HTTP/1.1) to the attacked mesh and to a control mesh that no one
// attacks, sequential requests for a body small enough to be one window,
// every byte read.
type prober struct {
	attacked, control *flowMesh
	h2, h1            *http.Client
}

func newProber(t *testing.T, attacked, control *flowMesh) *prober {
	return &prober{attacked: attacked, control: control, h2: testkit.H2CClient(t), h1: testkit.H1Client(t)}
}

// probeSamples is how many requests per mesh the well-behaved client
// makes per phase: p99 over 400 samples is the 4th-slowest, robust to a
// few scheduler hiccups on a busy machine.
const probeSamples = 400

// sample makes n pairs of requests, one through each mesh, the two of a
// pair sent at the same moment (alternating h2c and HTTP/1.1), so that a
// stall of the whole process or machine (a GC pause, another job's
// burst) slows both alike, and returns their latencies. It fails on the
// first error: a request that fails or stalls (probeStall) under attack
// is the starvation this file is about.
//
// A pair during which this process was starved of CPU (a goroutine
// waited probeStarved or more to run) is set aside and made again: the
// two requests of a pair are never exactly simultaneous, so such a wait
// lands on one of them, and a few of those decide a p99 (a full -race
// run of this package at load 10-23 failed the 2x bound that way; the
// test passes alone). That hides nothing this comparison could see: the
// control mesh runs in the same process, so CPU the attack burns slows
// it alike.
func (p *prober) sample(ctx context.Context, t *testing.T, n int) (attacked, control []time.Duration) {
	t.Helper()
	meshes := [2]*flowMesh{p.attacked, p.control}
	sched := testkit.NewSchedWatch()
	defer sched.Stop()
	starved := 0
	guard := testkit.HangGuard(t)
	for i := 0; len(attacked) < n; i++ {
		// How many pairs that takes is the machine's doing, not the
		// code's: with two busy loops on the 2 cores, 2,265 of 2,665 idle
		// pairs were starved, and a cap of 10n starved pairs failed about
		// 1 run in 5. The attack cannot hide behind the redoing: CPU it
		// burns slows the control mesh alike, memory and the p99 ratio are
		// checked whatever it took to sample them, and a process starved
		// for good ends at the hang guard.
		if time.Now().After(guard) {
			t.Fatalf("the process was starved (a wait of %v or more to run) during %d of %d probe pairs: only %d of %d clean pairs by the hang guard",
				probeStarved, starved, i, len(attacked), n)
		}
		sched.Starved(0) // the pair's interval starts
		var lat [2]time.Duration
		var errs [2]error
		var wg sync.WaitGroup
		for j, m := range meshes {
			c, url := p.h2, "http://"+m.h2Bind+"/probe?size=16384"
			if i%2 == 1 {
				c, url = p.h1, "http://"+m.webBind+"/probe?size=16384"
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				lat[j], errs[j] = probe(ctx, c, url)
				if errs[j] != nil {
					errs[j] = fmt.Errorf("well-behaved request %d (%s) failed after %v: %w (%v)", i, url, lat[j].Round(time.Millisecond), errs[j], context.Cause(ctx))
				}
			}()
		}
		wg.Wait()
		wasStarved := sched.Starved(probeStarved)
		for _, err := range errs {
			// A probe cut off at probeStall is the starvation this file
			// is about, unless this process was itself starved of CPU
			// during it: then the pair is made again like any other
			// starved pair (a probe that hangs for good still fails, on
			// the first unstarved try or at the hang guard).
			if err != nil && !(wasStarved && errors.Is(err, errProbeStalled)) {
				t.Fatal(err)
			}
		}
		if wasStarved {
			starved++
			continue
		}
		attacked, control = append(attacked, lat[0]), append(control, lat[1])
	}
	if starved > 0 {
		t.Logf("%d of %d probe pairs made again: the process was starved during them", starved, n+starved)
	}
	return attacked, control
}

// probeStarved is a wait to run that marks a probe pair as starved: two
// of Go's 10 ms preemption slices, and more than the p99 of a probe on
// an idle machine.
const probeStarved = 20 * time.Millisecond

// probeStall is how long one probe may take before it counts as a
// well-behaved request starved by the attack, far beyond any latency the
// 2x bound compares. A probe cut off then fails the test only if this
// process was not starved of CPU during it (sample): at load ~37 on 2
// cores a probe ran into the limit while 126 of 146 pairs were starved,
// the machine's doing, not the attack's.
const probeStall = 10 * time.Second

// errProbeStalled is the cause of a probe cut off at probeStall.
var errProbeStalled = errors.New("no answer within the probe's stall limit")

// probe GETs url, reads the whole body and returns how long that took.
// A probe cut off at probeStall fails with an error that wraps
// errProbeStalled.
func probe(ctx context.Context, c *http.Client, url string) (time.Duration, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, probeStall, errProbeStalled)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	start := time.Now()
	resp, err := c.Do(req)
	if err == nil {
		var n int64
		n, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && (resp.StatusCode != 200 || n != 16384) {
			err = fmt.Errorf("status %d, %d bytes", resp.StatusCode, n)
		}
	}
	if err != nil && context.Cause(ctx) == errProbeStalled {
		err = fmt.Errorf("%w: %w", errProbeStalled, err)
	}
	return time.Since(start), err
}

func p99(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*99/100]
}

// waitHits waits until n requests for path reached the app.
func waitHits(ctx context.Context, t *testing.T, m *flowMesh, path string, n int) {
	t.Helper()
	for m.hits.get(path) < n {
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d attack requests reached the app: %v", m.hits.get(path), n, context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitQuiet waits until the client sidecar's connection to the server
// sidecar has carried less than 64 KiB in quiet: nothing more is under
// way for the attack. For stalled readers that means their responses
// have filled every buffer and window they may fill (until then the
// attacking sockets' kernel buffers absorb data, which is load like any
// download, not the starvation tested here); after a reset flood, that
// every request it started has ended.
func waitQuiet(ctx context.Context, t *testing.T, m *flowMesh, quiet time.Duration) {
	t.Helper()
	pc, err := m.client.Pool().Get(ctx, m.server.InboundAddr().String(), identity.MustParseID(echoID))
	if err != nil {
		t.Fatal(err)
	}
	received := func() uint64 { return pc.Conn.ConnectionStats().BytesReceived }
	last, since := received(), time.Now()
	for time.Since(since) < quiet {
		select {
		case <-ctx.Done():
			t.Fatalf("the mesh never went quiet: %v", context.Cause(ctx))
		case <-time.After(quiet / 10):
		}
		if n := received(); n-last > 64<<10 {
			last, since = n, time.Now()
		}
	}
}

// flowBudget is what one stalled request may hold in the two sidecars
// under test, derived from their configuration, plus the test's fixed
// per-request allowance for proxy state (request and stream structs,
// headers, QPACK and HPACK state) measured at well under 16 KiB.
func flowBudget(m *flowMesh) (perRequest uint64, parts string) {
	lim := m.client.Limits()
	quicWindow := lim.InitialStreamReceiveWindow
	appWindow := uint64(inbound.DefaultAppStreamWindow)
	copyBuf := uint64(2 * bridgeCopyBuffer)
	const stateAllowance = 64 << 10
	perRequest = quicWindow + appWindow + copyBuf + stateAllowance
	return perRequest, fmt.Sprintf("QUIC initial stream window %d + app h2 stream window %d + 2 copy buffers %d + state %d", quicWindow, appWindow, copyBuf, stateAllowance)
}

// bridgeCopyBuffer is bridge's per-request copy buffer, held while a copy
// is blocked on a stalled reader (one in each sidecar).
const bridgeCopyBuffer = 32 << 10

// stallScale is the number of stalled requests per attack: the issue's
// figures without the race detector, fewer with it (every goroutine and
// allocation costs several times more).
func stallScale(full int) int {
	if raceEnabled {
		return full / 4
	}
	return full
}

// assertFlowHeld checks the two properties a stalled reader must not
// break: the live heap stays within the configured per-request budget
// (plus what the process held before the attack), and the well-behaved
// client's p99 through the attacked mesh stays within 2x of its baseline.
// The baseline is the larger of its p99 just before the attack and the
// p99 through the control mesh, each of whose requests was sent together
// with one through the attacked mesh: on a machine shared with other work
// the load of the moment moves p99 by more than 2x, and the control sees
// the same load.
func assertFlowHeld(t *testing.T, m *flowMesh, stalled int, heapBefore uint64, w *heapWatch, idle, under, control []time.Duration) {
	t.Helper()
	perReq, parts := flowBudget(m)
	bound := heapBefore + uint64(stalled)*perReq
	live := liveHeap()
	base := max(p99(idle), p99(control))
	t.Logf("%d stalled requests: live heap %d MiB (peak %d MiB, %d MiB before; bound %d MiB = before + %d x %d KiB [%s]); well-behaved p99 %v before the attack, %v under attack, %v through the control mesh",
		stalled, live>>20, w.peak.Load()>>20, heapBefore>>20, bound>>20, stalled, perReq>>10, parts, p99(idle), p99(under), p99(control))
	if w.over.Load() {
		t.Fatalf("heap passed %d MiB during the attack", w.peak.Load()>>20)
	}
	if live > bound {
		t.Errorf("live heap %d MiB with %d stalled requests; want <= %d MiB", live>>20, stalled, bound>>20)
	}
	if p99(under) > 2*base {
		t.Errorf("well-behaved p99 %v under attack; want within 2x of %v", p99(under), base)
	}
}

// stallTest runs the parts common to the stalled-reader attacks: two
// meshes, the idle baseline, the attack (started by attack, which
// returns how many requests it stalled), the wait until it has stalled,
// the probes under attack and the assertions.
func stallTest(t *testing.T, attack func(m *flowMesh) int) {
	testkit.CheckLeaks(t)
	m := newFlowMesh(t)
	control := newFlowMesh(t)
	p := newProber(t, m, control)
	p.sample(context.Background(), t, 20) // connections up, pools warm
	idle, _ := p.sample(context.Background(), t, probeSamples)
	heapBefore := liveHeap()

	// A heap 4x over the bound fails at once instead of exhausting the
	// shared machine's memory (the unfixed build reached 3 GB).
	perReq, _ := flowBudget(m)
	w, ctx := watchHeap(context.Background(), heapBefore+4*uint64(stallScale(1000))*perReq)
	defer w.stop()
	stalled := attack(m)
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	waitHits(wctx, t, m, "/stall", stalled)
	waitQuiet(wctx, t, m, 500*time.Millisecond)
	under, control2 := p.sample(ctx, t, probeSamples)
	assertFlowHeld(t, m, stalled, heapBefore, w, idle, under, control2)
}

// One client opens many h2c streams, each asking for 10 MB, and never
// reads: no WINDOW_UPDATE ever. Its streams must stall alone: memory
// bounded by configuration in both sidecars, other clients unaffected.
func TestStalledH2ReaderIsolated(t *testing.T) {
	stallTest(t, func(m *flowMesh) int {
		streams := stallScale(1000)
		atk := dialH2Raw(t, m.h2Bind)
		for range streams {
			atk.get("h2", "/stall?size=10485760")
		}
		if err := atk.flush(); err != nil {
			t.Fatal(err)
		}
		return streams
	})
}

// Many HTTP/1.1 clients ask for 10 MB and never read, with a small
// receive buffer so that their kernel does not absorb the body for them.
func TestStalledH1ReadersIsolated(t *testing.T) {
	stallTest(t, func(m *flowMesh) int {
		conns := stallScale(300)
		d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			if err != nil {
				return err
			}
			return serr
		}}
		for range conns {
			c, err := d.Dial("tcp", m.webBind)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if _, err := io.WriteString(c, "GET /stall?size=10485760 HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
		return conns
	})
}
