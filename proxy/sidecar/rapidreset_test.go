package sidecar_test

import (
	"context"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// A client opens streams and has them reset at once, 10,000 a second:
// by resetting them itself (Rapid Reset) or by sending a frame the server
// must answer with a reset (MadeYouReset: WINDOW_UPDATE with increment 0
// on the stream). The sidecar that parses the HTTP/2 must close the
// connection with GOAWAY ENHANCE_YOUR_CALM within a second, and almost
// none of the reset requests may reach the far app: the outbound sidecar
// for its app's connections, and the inbound sidecar for HTTP/2 that a
// peer carries in an opaque tunnel (a peer is not trusted to behave).
func TestRapidResetClosesConnection(t *testing.T) {
	type provoke func(h *h2Raw, stream uint32)
	for _, tc := range []struct {
		name    string
		provoke provoke
		tunnel  bool
	}{
		{"client resets", func(h *h2Raw, id uint32) { h.fr.WriteRSTStream(id, http2.ErrCodeCancel) }, false},
		{"server provoked resets", func(h *h2Raw, id uint32) { h.fr.WriteWindowUpdate(id, 0) }, false},
		{"client resets through a tunnel", func(h *h2Raw, id uint32) { h.fr.WriteRSTStream(id, http2.ErrCodeCancel) }, true},
		{"server provoked resets through a tunnel", func(h *h2Raw, id uint32) { h.fr.WriteWindowUpdate(id, 0) }, true},
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
					if ga, ok := f.(*http2.GoAwayFrame); ok {
						o.goAway, o.sawGo = ga.ErrCode, true
					}
				}
			}()

			const rate = 10000 // resets a second
			// Through a tunnel the inbound sidecar sees the flood only as
			// fast as the stream's flow control lets it through (its
			// window starts small, transport.Limits), so it may close
			// later than the outbound does on its own listener.
			closeWithin := time.Second
			if tc.tunnel {
				closeWithin = 2 * time.Second
			}
			giveUp := closeWithin + time.Second
			start := time.Now()
			sent := 0
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			var o outcome
		attack:
			for {
				elapsed := time.Since(start)
				if elapsed > giveUp {
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
			t.Logf("connection closed %v after the flood began, GOAWAY %v (%v); %d resets sent, %d requests reached the app",
				took.Round(time.Millisecond), o.goAway, o.sawGo, sent, hits)
			if took > closeWithin {
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
