package h2tcp

import (
	"io"
	"net/http"
	"runtime"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// heldStreams is how many streams the memory tests hold open at once:
// the scenario runner's gRPC maximum-throughput load runs 32 calls.
const heldStreams = 32

// maxHeldPerStream bounds the memory (Go heap and goroutine stacks, both
// ends together) one open stream holds. Measured with 16 KiB frames
// (maxFrameSize): about 50 KiB per HTTP request with an open body and
// 84 KiB per tunnel; with x/net/http2's default 1 MiB frames 547 and
// 583 KiB (the outbound side's http2.Transport held a 512 KiB
// request-body buffer per stream), which this bound catches.
const maxHeldPerStream = 192 << 10

// heldBytes is the Go heap in use plus goroutine stacks after a full
// collection (twice: sync.Pool contents survive one).
func heldBytes() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc + ms.StackInuse)
}

// An HTTP request whose body is still open (a gRPC call, a streamed
// upload: no Content-Length) holds a bounded amount of memory while in
// flight, on both ends together.
func TestHeldMemoryPerOpenRequest(t *testing.T) {
	started := make(chan struct{}, heldStreams)
	p := newPair(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [1]byte
		if _, err := io.ReadFull(r.Body, b[:]); err != nil {
			return
		}
		started <- struct{}{}
		io.Copy(io.Discard, r.Body) // until the client ends the body
		io.WriteString(w, "ok")
	}))
	pc := p.get(t)
	roundTrip := func(body io.ReadCloser) (<-chan error, error) {
		req, err := http.NewRequestWithContext(testkit.HangCtx(t), "POST", "https://web/", body)
		if err != nil {
			return nil, err
		}
		req.ContentLength = -1
		done := make(chan error, 1)
		go func() {
			resp, err := pc.RoundTrip(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			done <- err
		}()
		return done, nil
	}
	// One request first, so that what every connection allocates once
	// (the framers' buffers, HPACK tables) is in the baseline.
	open := func() (io.WriteCloser, <-chan error) {
		pr, pw := io.Pipe()
		done, err := roundTrip(pr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		<-started
		return pw, done
	}
	pw, done := open()
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	before := heldBytes()
	var bodies []io.WriteCloser
	var dones []<-chan error
	for range heldStreams {
		pw, done := open()
		bodies = append(bodies, pw)
		dones = append(dones, done)
	}
	held := heldBytes() - before
	for i, pw := range bodies {
		pw.Close()
		if err := <-dones[i]; err != nil {
			t.Fatal(err)
		}
	}
	perStream := held / heldStreams
	t.Logf("%d open requests hold %d KiB: %d KiB each", heldStreams, held>>10, perStream>>10)
	if perStream > maxHeldPerStream {
		t.Errorf("an open request holds %d KiB, want at most %d KiB", perStream>>10, maxHeldPerStream>>10)
	}
}

// An open tunnel holds a bounded amount of memory, on both ends together.
func TestHeldMemoryPerOpenTunnel(t *testing.T) {
	p := newPair(t, http.NotFoundHandler())
	pc := p.get(t)
	open := func() (*Stream, tunnelCall) {
		str, err := pc.OpenTunnel(testkit.HangCtx(t), "db")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := str.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		call := <-p.tunnel
		var b [1]byte
		if _, err := io.ReadFull(call.str, b[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := call.str.Write(b[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(str, b[:]); err != nil {
			t.Fatal(err)
		}
		return str, call
	}
	closeTunnel := func(str *Stream, call tunnelCall) {
		str.CloseWrite()
		call.str.CloseWrite()
		if _, err := io.ReadAll(str); err != nil {
			t.Error(err)
		}
		if _, err := io.ReadAll(call.str); err != nil {
			t.Error(err)
		}
		close(call.done)
	}
	closeTunnel(open())

	before := heldBytes()
	type open2 struct {
		str  *Stream
		call tunnelCall
	}
	var tunnels []open2
	for range heldStreams {
		str, call := open()
		tunnels = append(tunnels, open2{str, call})
	}
	held := heldBytes() - before
	for _, tn := range tunnels {
		closeTunnel(tn.str, tn.call)
	}
	perStream := held / heldStreams
	t.Logf("%d open tunnels hold %d KiB: %d KiB each", heldStreams, held>>10, perStream>>10)
	if perStream > maxHeldPerStream {
		t.Errorf("an open tunnel holds %d KiB, want at most %d KiB", perStream>>10, maxHeldPerStream>>10)
	}
}
