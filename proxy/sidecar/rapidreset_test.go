package sidecar_test

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/internal/h2guard"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// A client opens streams and has them reset at once, 10,000 a second:
// by resetting them itself (Rapid Reset) or by sending a frame the server
// must answer with a reset (MadeYouReset: WINDOW_UPDATE with increment 0
// on the stream). The sidecar that parses the HTTP/2 must close the
// connection with GOAWAY ENHANCE_YOUR_CALM once the reset budget its
// configuration gives is spent (see the bounds below), and almost
// none of the reset requests may reach the far app: the outbound sidecar
// for its app's connections, and the inbound sidecar for HTTP/2 that a
// peer carries in an opaque tunnel (a peer is not trusted to behave).
func TestRapidResetClosesConnection(t *testing.T) {
	type provoke func(h *h2Raw, stream uint32)
	for _, tc := range []struct {
		name     string
		provoke  provoke
		provoked bool // the server resets the streams, not the client
		tunnel   bool
	}{
		{"client resets", func(h *h2Raw, id uint32) { h.fr.WriteRSTStream(id, http2.ErrCodeCancel) }, false, false},
		{"server provoked resets", func(h *h2Raw, id uint32) { h.fr.WriteWindowUpdate(id, 0) }, true, false},
		{"client resets through a tunnel", func(h *h2Raw, id uint32) { h.fr.WriteRSTStream(id, http2.ErrCodeCancel) }, false, true},
		{"server provoked resets through a tunnel", func(h *h2Raw, id uint32) { h.fr.WriteWindowUpdate(id, 0) }, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newFlowMesh(t)
			target := m.webBind
			if tc.tunnel {
				target = m.webTunnelBind
			}
			atk := dialH2Raw(t, target)
			atk.fr.AllowIllegalWrites = true // WINDOW_UPDATE 0

			type outcome struct {
				goAway http2.ErrCode
				sawGo  bool
				closed time.Time
			}
			var rsts atomic.Int64       // RST_STREAM frames the server sent
			var firstRST atomic.Int64   // when the first came, unix ns
			warm := make(chan struct{}) // the warm-up request was answered
			var warmOnce sync.Once
			ended := make(chan outcome, 1)
			go func() {
				fr := http2.NewFramer(io.Discard, atk.conn)
				var o outcome
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						o.closed = time.Now()
						ended <- o
						return
					}
					switch f := f.(type) {
					case *http2.GoAwayFrame:
						o.goAway, o.sawGo = f.ErrCode, true
					case *http2.RSTStreamFrame:
						firstRST.CompareAndSwap(0, time.Now().UnixNano())
						rsts.Add(1)
					}
					if f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
						warmOnce.Do(func() { close(warm) }) // HEADERS and DATA share the END_STREAM bit
					}
				}
			}()
			// One real request first: the clock starts once the path is
			// up (through a tunnel: protocol detection, the mesh dial and
			// the inbound sidecar's HTTP/2 server), which under load can
			// take a second that has nothing to do with resets.
			atk.get("web", "/warm")
			if err := atk.flush(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-warm:
			case o := <-ended:
				t.Fatalf("connection closed before the warm-up request was answered (GOAWAY %v)", o.goAway)
			case <-time.After(time.Until(testkit.HangGuard(t))):
				t.Fatal("warm-up request never answered")
			}

			// Client resets are counted as the guard reads them, at the
			// speed the bytes arrive, so the connection must close within
			// a second of the flood (through a tunnel the inbound sidecar
			// sees the flood only as fast as the stream's flow control
			// lets it through: its window starts small, transport.Limits).
			//
			// Resets the server is provoked into are counted as the server
			// sends them, at the speed the HTTP/2 server processes the
			// flood, which a loaded machine slows to a few hundred streams
			// a second (and a server slower than 2 x PerSecond is, by the
			// limit's definition, not being abused). So the bound there is
			// in resets, from the guard's configuration: the bucket
			// (Burst, plus PerSecond for the time the resets took, plus
			// PerStream for each stream opened, up to one read-ahead of
			// HEADERS ahead of the resets) runs dry after at most
			// maxProvoked(T) resets. A guard that never closes fails as
			// soon as the server has sent more; the hang guard is only
			// for a server that stopped processing altogether.
			lim := h2guard.DefaultLimit
			// The smallest HEADERS+WINDOW_UPDATE pair: two 9-byte frame
			// headers, 4 bytes of indexed HPACK fields, a 4-byte increment.
			const minPair = 9 + 4 + 9 + 4
			maxProvoked := func(T time.Duration) int64 {
				batch := float64(h2guard.ReadAhead / minPair)
				return int64((lim.Burst + lim.PerSecond*T.Seconds() + lim.PerStream*batch) / (1 - lim.PerStream))
			}
			closeWithin := time.Second
			if tc.tunnel {
				closeWithin = 2 * time.Second
			}
			giveUp := time.Until(testkit.HangGuard(t))
			if !tc.provoked {
				giveUp = closeWithin + time.Second
			}
			const rate = 10000 // resets a second
			start := time.Now()
			sent := 0
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			var o outcome
			overrun := ""
		attack:
			for {
				elapsed := time.Since(start)
				n := rsts.Load()
				if first := firstRST.Load(); tc.provoked && first != 0 {
					if T := time.Since(time.Unix(0, first)); n > maxProvoked(T) {
						overrun = fmt.Sprintf("still open after the server sent %d resets in %v; the guard's limit allows at most %d", n, T.Round(time.Millisecond), maxProvoked(T))
					}
				}
				if elapsed > giveUp || overrun != "" {
					// Still open: end the attack to count what it got
					// through.
					atk.conn.Close()
					o = <-ended
					break
				}
				for due := int(elapsed.Seconds() * rate); sent < due; sent++ {
					tc.provoke(atk, atk.get("web", "/rr"))
				}
				if err := atk.flush(); err != nil {
					o = <-ended
					break
				}
				select {
				case o = <-ended:
					break attack
				case <-tick.C:
				}
			}
			took := o.closed.Sub(start)

			// Whatever the flood started upstream has ended once the
			// mesh is quiet; then count what reached the app.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			waitQuiet(ctx, t, m, 500*time.Millisecond)
			hits := m.hits.get("/rr")
			var resetsFor time.Duration
			if first := firstRST.Load(); first != 0 {
				resetsFor = o.closed.Sub(time.Unix(0, first))
			}
			t.Logf("connection closed %v after the flood began, GOAWAY %v (%v); %d resets sent, %d requests reached the app; the server sent %d resets over %v",
				took.Round(time.Millisecond), o.goAway, o.sawGo, sent, hits, rsts.Load(), resetsFor.Round(time.Millisecond))
			switch {
			case overrun != "":
				t.Error(overrun)
			case tc.provoked && rsts.Load() > maxProvoked(resetsFor):
				t.Errorf("the server sent %d resets in %v before the close; the guard's limit allows at most %d", rsts.Load(), resetsFor, maxProvoked(resetsFor))
			case !tc.provoked && took > closeWithin:
				t.Errorf("connection closed %v after the flood began; want within %v", took, closeWithin)
			}
			if !o.sawGo || o.goAway != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("no GOAWAY ENHANCE_YOUR_CALM before the close (saw GOAWAY: %v, code %v)", o.sawGo, o.goAway)
			}
			if hits*100 > sent {
				t.Errorf("%d of %d reset requests reached the app; want at most 1%%", hits, sent)
			}
		})
	}
}
