package transport_test

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/transport"
)

// stalledGuarantee is what docs/design.md ("QUIC limits and why")
// promises with the default limits: this many streams of one peer
// connection may stall holding their whole, fully grown, window and every
// other stream of that connection keeps flowing.
const stalledGuarantee = 3

// Streams whose receivers stop reading after their windows grew must not
// stop the other streams of the connection: quic-go returns connection
// credit only for data read, and a stalled stream holds up to its grown
// window. A stream whose window auto-tuning grew to the ceiling holds
// exactly what one that started at the ceiling holds (quic-go never
// shrinks a window), so the grown streams here start at the ceiling: the
// test does not depend on how fast auto-tuning grows them on a loaded
// machine. Each stalled stream is filled with its whole window, as the
// sender behind a stalled reader does, before a fresh request is sent on
// the same connection. With every other stream stalled too,
// holding its initial window, is the whole of Limits.StalledStreams.
func TestStalledGrownStreamsDoNotStarveOthers(t *testing.T) {
	lim := transport.Limits{}.WithDefaults()
	// The liveness watch is not under test: under -race beside two CPU
	// hogs it once declared the in-process peer dead (no ACK within 1 s)
	// while a stalled stream was being filled. The idle timeout stays.
	lim.LivenessTimeout = -1
	if got := lim.StalledStreams(); got < stalledGuarantee {
		t.Fatalf("default limits guarantee %d stalled streams, docs promise %d", got, stalledGuarantee)
	}
	for _, tc := range []struct {
		name  string
		small int64 // streams stalled with their initial window
	}{
		{"grown streams stalled", 0},
		{"and every other stream stalled before it grew", lim.MaxIncomingStreams - 1 - stalledGuarantee},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.CheckLeaks(t)
			sizes := make([]uint64, 0, stalledGuarantee+tc.small)
			for range stalledGuarantee {
				sizes = append(sizes, lim.StreamReceiveWindow)
			}
			for range tc.small {
				sizes = append(sizes, lim.InitialStreamReceiveWindow)
			}
			if err := requestBehindStalledStreams(t, lim, sizes); err != nil {
				t.Fatalf("a request behind %d stalled streams of %d bytes and %d of %d (connection window %d): %v",
					stalledGuarantee, lim.StreamReceiveWindow, tc.small, lim.InitialStreamReceiveWindow, lim.ConnectionReceiveWindow, err)
			}
		})
	}
}

// requestBehindStalledStreams connects a pool to a listener, both with
// lim, except that every stream the listener accepts may hold
// lim.StreamReceiveWindow from the start. It opens one stream per size,
// which the listener never reads, and fills each with that many bytes;
// then it sends a request larger than the connection credit they left on
// a new stream and waits for the answer. A write that makes no progress
// for the idle timeout never will: the stalled streams are never read,
// and the request's own data is read as it arrives.
func requestBehindStalledStreams(t *testing.T, lim transport.Limits, sizes []uint64) error {
	recv := lim
	recv.InitialStreamReceiveWindow = lim.StreamReceiveWindow
	ca := identitytest.NewCA(t, "t.local")
	ep, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: identitytest.Provider(t, ca, serverID), Limits: recv})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() { ep.Close(); wg.Wait() }()
	wg.Go(func() {
		c, err := ep.Accept(context.Background())
		if err != nil {
			return
		}
		serveHTTP3(t, c)
		for i := 0; ; i++ {
			str, err := c.AcceptStream(context.Background())
			if err != nil {
				return
			}
			if i < len(sizes) {
				continue // the app behind this stream stopped reading
			}
			wg.Go(func() { echoDone(str) })
		}
	})

	p := newPool(t, ca, lim)
	pc, err := p.Get(context.Background(), ep.Addr().String(), identity.MustParseID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	var held uint64
	for i, n := range sizes {
		str, err := pc.Conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer str.CancelWrite(transport.CodeReset)
		if err := writeProgressing(str, n, lim.IdleTimeout); err != nil {
			return fmt.Errorf("filling stalled stream %d with %d bytes: %w", i, n, err)
		}
		held += n
	}

	str, err := pc.Conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer str.CancelWrite(transport.CodeReset)
	// More than the connection credit left when the others stalled: it
	// goes through only if the peer grants more once it is read, and the
	// next grant finds the stalled streams as this one did.
	if err := writeProgressing(str, lim.ConnectionReceiveWindow-held+1<<20, lim.IdleTimeout); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	str.Close()
	str.SetReadDeadline(time.Now().Add(lim.IdleTimeout))
	if _, err := io.Copy(io.Discard, str); err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	return nil
}

// writeProgressing writes n bytes to str, failing once a 64 KiB piece
// could not be written (quic-go had no credit for it) within idle.
func writeProgressing(str *quic.Stream, n uint64, idle time.Duration) error {
	buf := make([]byte, 64<<10)
	for sent := uint64(0); sent < n; {
		p := buf[:min(n-sent, uint64(len(buf)))]
		str.SetWriteDeadline(time.Now().Add(idle))
		if _, err := str.Write(p); err != nil {
			return fmt.Errorf("stopped after %d of %d bytes: %w", sent, n, err)
		}
		sent += uint64(len(p))
	}
	return nil
}

// echoDone reads the stream to its end and ends it: a request answered.
func echoDone(str *quic.Stream) {
	if _, err := io.Copy(io.Discard, str); err != nil {
		str.CancelWrite(transport.CodeReset)
		return
	}
	str.Close()
}
