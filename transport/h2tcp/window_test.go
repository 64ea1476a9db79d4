package h2tcp

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// stallChunk is what the stalling handlers write at a time; it divides
// the stream window, so a stream whose reader stalled has written exactly
// its window when its next write blocks.
const stallChunk = 16 << 10

// stallServer answers /stall/i with an endless body, counting in
// written[i] the bytes whose Write returned (the peer's flow control let
// them onto the connection, so the dialling side holds them until its
// app reads), and /bulk/n with n bytes.
type stallServer struct {
	written []atomic.Int64
	target  int64         // a stall handler sends on reached once it wrote this much
	reached chan struct{} // one value per stall handler that wrote target
}

func (s *stallServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	buf := make([]byte, stallChunk)
	if n, ok := strings.CutPrefix(r.URL.Path, "/bulk/"); ok {
		size, _ := strconv.Atoi(n)
		for ; size > 0; size -= stallChunk {
			if _, err := w.Write(buf[:min(size, stallChunk)]); err != nil {
				return
			}
		}
		return
	}
	i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/stall/"))
	told := false
	for {
		if _, err := w.Write(buf); err != nil {
			return // the dialling side reset the stream
		}
		w.(http.Flusher).Flush()
		if n := s.written[i].Add(stallChunk); n >= s.target && !told {
			told = true
			s.reached <- struct{}{}
		}
	}
}

// roundTripPath starts a request for path on pc and returns its response, body
// unread.
func roundTripPath(t *testing.T, ctx context.Context, pc *PeerConn, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", "https://web"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := pc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// A peer answering streams whose readers on our (dialling) side stopped
// reading can make us buffer at most the stream window per stream and
// the connection window in all (receiveWindows, the accepting side's
// numbers), not x/net/http2's 4 MiB per stream and 1 GiB per connection;
// and while as many streams as the connection window holds beyond one
// stream window are stalled, a new stream on that connection still
// flows.
func TestStalledResponsesStayWithinReceiveWindows(t *testing.T) {
	lim := transport.Limits{}.WithDefaults()
	connWin, streamWin := receiveWindows(lim)
	// x/net/http2's client grants the connection window on top of the
	// protocol's initial 65,535 bytes.
	connBound := int64(connWin) + 65535
	// Stalled streams that leave at least one stream window of
	// connection credit: 63 with the defaults.
	stalled := int(connBound/int64(streamWin)) - 1
	s := &stallServer{written: make([]atomic.Int64, stalled), target: int64(streamWin), reached: make(chan struct{}, stalled)}
	// No liveness watch (frozen_test.go tests it): under -race on a
	// loaded machine its 1 s would close the connection while the test
	// pushes 70 MiB through it, and the windows are what is tested here.
	p := newPairBoth(t, s, transport.Limits{}, transport.Limits{LivenessTimeout: -1})
	pc := p.get(t)
	ctx := testkit.HangCtx(t)
	for i := range stalled {
		resp := roundTripPath(t, ctx, pc, fmt.Sprintf("/stall/%d", i))
		t.Cleanup(func() { resp.Body.Close() })
	}
	for range stalled {
		select {
		case <-s.reached:
		case <-ctx.Done():
			t.Fatalf("stalled streams did not each get a stream window (%d bytes) through", streamWin)
		}
	}
	// Another stream flows; it also gives the peer's write scheduler, which
	// interleaves every stream that has credit, time to send the stalled
	// streams anything beyond their windows.
	const bulk = 8 << 20
	resp := roundTripPath(t, ctx, pc, fmt.Sprintf("/bulk/%d", bulk))
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != bulk {
		t.Fatalf("a new stream beside %d stalled ones read %d bytes (%v), want %d", stalled, n, err, bulk)
	}
	var total int64
	for i := range s.written {
		w := s.written[i].Load()
		if w > int64(streamWin) {
			t.Errorf("stalled stream %d: peer wrote %d bytes, stream window %d", i, w, streamWin)
		}
		total += w
	}
	t.Logf("%d stalled streams: peer wrote %d bytes (stream window %d, connection window %d)", stalled, total, streamWin, connBound)
	if total > connBound {
		t.Errorf("%d stalled streams: peer wrote %d bytes, connection window %d", stalled, total, connBound)
	}
}
