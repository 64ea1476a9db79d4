package quicinitial

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// firstFlight is what a real quic-go client sent to a UDP socket that
// never answers, up to the datagram that completed its ClientHello (read
// by a fresh Assembler as the datagrams came, as a gateway reads them).
type firstFlight struct {
	datagrams [][]byte
	hello     Hello
}

// recordFirstFlight dials a recording UDP socket on loopback with quic-go
// and returns the client's first flight. The dial is abandoned once the
// ClientHello is complete; nothing answers it.
func recordFirstFlight(t testing.TB, tlsConf *tls.Config, quicConf *quic.Config) firstFlight {
	t.Helper()
	ctx := testkit.HangCtx(t)
	server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: client}
	defer tr.Close() // closes client too

	dialCtx, stopDial := context.WithCancel(ctx)
	dialed := make(chan error, 1)
	go func() {
		conn, err := tr.Dial(dialCtx, server.LocalAddr(), tlsConf, quicConf)
		if err == nil {
			_ = conn.CloseWithError(0, "")
			err = errors.New("handshake with a socket that never answers succeeded")
		}
		dialed <- err
	}()
	defer func() {
		stopDial()
		if err := <-dialed; !errors.Is(err, context.Canceled) {
			t.Errorf("dial ended with %v, want context.Canceled", err)
		}
	}()

	dl, _ := ctx.Deadline()
	if err := server.SetReadDeadline(dl); err != nil {
		t.Fatal(err)
	}
	var ff firstFlight
	var a Assembler
	buf := make([]byte, 64<<10)
	for {
		n, _, err := server.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("after %d datagrams without a complete ClientHello: %v", len(ff.datagrams), err)
		}
		d := bytes.Clone(buf[:n])
		ff.datagrams = append(ff.datagrams, d)
		h, done, err := a.Feed(d)
		if err != nil {
			t.Fatalf("datagram %d (%d bytes): %v", len(ff.datagrams), n, err)
		}
		if done {
			ff.hello = h
			return ff
		}
	}
}

func meshTLS(serverName string, alpn ...string) *tls.Config {
	// Nothing answers, so nothing is verified; the client's own TLS stack
	// still builds its real ClientHello.
	return &tls.Config{ServerName: serverName, NextProtos: alpn, MinVersion: tls.VersionTLS13}
}

// longName is a server name of n characters in labels of at most 63.
func longName(n int) string {
	s := strings.Repeat(strings.Repeat("a", 63)+".", n/64+1)[:n]
	if strings.HasSuffix(s, ".") {
		s = s[:n-1] + "b"
	}
	return s
}

func manyALPN(n int) []string {
	protos := []string{"quicmesh/1", "h3"}
	for i := len(protos); i < n; i++ {
		protos = append(protos, "proto-"+strings.Repeat("x", 40)+"-"+string(rune('a'+i%26)))
	}
	return protos
}

// TestQuicGoClientHello: quic-go's real first flight, in the shapes a
// gateway meets: Go's default key shares (post-quantum, two packets),
// a classic key share (one packet), QUIC v2, a long server name with many
// ALPN protocols (three packets or more).
func TestQuicGoClientHello(t *testing.T) {
	testkit.CheckLeaks(t)
	for _, tc := range []struct {
		name       string
		tls        *tls.Config
		quic       *quic.Config
		version    uint32
		minPackets int // Initial datagrams the ClientHello needs at least
	}{
		{"default key shares", meshTLS("svc.example", "quicmesh/1", "h3"), nil, Version1, 2},
		{"X25519 only", func() *tls.Config {
			c := meshTLS("svc.example", "quicmesh/1", "h3")
			c.CurvePreferences = []tls.CurveID{tls.X25519}
			return c
		}(), nil, Version1, 1},
		{"QUIC v2", meshTLS("svc.example", "quicmesh/1", "h3"), &quic.Config{Versions: []quic.Version{quic.Version2}}, Version2, 2},
		{"long name, many ALPN", meshTLS(longName(253), manyALPN(40)...), nil, Version1, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ff := recordFirstFlight(t, tc.tls, tc.quic)
			h := ff.hello
			if h.ServerName != tc.tls.ServerName || !slices.Equal(h.ALPN, tc.tls.NextProtos) || h.Version != tc.version {
				t.Errorf("Hello{ServerName: %q, ALPN: %q, Version: %#x}, want %q, %q, %#x",
					h.ServerName, h.ALPN, h.Version, tc.tls.ServerName, tc.tls.NextProtos, tc.version)
			}
			if len(h.DCID) < 8 {
				t.Errorf("DCID %x: quic-go picks at least 8 bytes", h.DCID)
			}
			if len(ff.datagrams) < tc.minPackets {
				t.Errorf("ClientHello complete after %d datagrams, want at least %d (the test no longer covers reassembly)", len(ff.datagrams), tc.minPackets)
			}
			t.Logf("ClientHello in %d datagrams of %v bytes", len(ff.datagrams), sizes(ff.datagrams))
			for i, d := range ff.datagrams {
				hdr, err := PeekInitial(d)
				if err != nil || !bytes.Equal(hdr.DCID, h.DCID) || !bytes.Equal(hdr.SCID, h.SCID) || hdr.Version != h.Version {
					t.Errorf("PeekInitial(datagram %d) = %+v, %v", i, hdr, err)
				}
			}
			if len(ff.datagrams) == 1 {
				if got, err := Parse(ff.datagrams[0]); err != nil || !equalHello(got, h) {
					t.Errorf("Parse = %+v, %v", got, err)
				}
			} else if _, err := Parse(ff.datagrams[0]); !errors.Is(err, ErrNeedMore) {
				t.Errorf("Parse(first datagram) = %v, want ErrNeedMore", err)
			}
			checkOrders(t, ff)
		})
	}
}

// checkOrders feeds the first flight reversed, with every datagram twice,
// and interleaved with other connections' and broken datagrams: the Hello
// is the same, and complete exactly when the last distinct datagram is in.
func checkOrders(t testing.TB, ff firstFlight) {
	t.Helper()
	n := len(ff.datagrams)
	reversed := slices.Clone(ff.datagrams)
	slices.Reverse(reversed)
	var doubled [][]byte
	for _, d := range reversed {
		doubled = append(doubled, d, d)
	}
	for _, order := range []struct {
		name      string
		datagrams [][]byte
		doneAt    int
	}{
		{"reversed", reversed, n - 1},
		{"reversed, each twice", doubled, 2*n - 2},
	} {
		var a Assembler
		for i, d := range order.datagrams {
			h, done, err := a.Feed(d)
			if err != nil {
				t.Fatalf("%s: datagram %d: %v", order.name, i, err)
			}
			if done != (i >= order.doneAt) {
				t.Fatalf("%s: datagram %d: complete = %v, want it from datagram %d on", order.name, i, done, order.doneAt)
			}
			if done && !equalHello(h, ff.hello) {
				t.Errorf("%s: Hello %+v, want %+v", order.name, h, ff.hello)
			}
		}
	}
	if n < 2 {
		return
	}
	// A damaged datagram and one of another connection, fed between the
	// real ones, are refused without disturbing the flow.
	damaged := bytes.Clone(ff.datagrams[1])
	damaged[len(damaged)/2] ^= 0x01
	other := seal(t, sealSpec{version: ff.hello.Version, dcid: []byte("another-connection"), payload: cryptoFrameBytes(0, []byte{1, 0, 0}), size: 1200})
	var a Assembler
	for i, d := range ff.datagrams {
		_, done, err := a.Feed(d)
		if err != nil || done != (i == n-1) {
			t.Fatalf("interleaved: datagram %d: done %v, %v", i, done, err)
		}
		if i == 0 {
			if _, _, err := a.Feed(damaged); !errors.Is(err, ErrDecrypt) {
				t.Errorf("damaged datagram: %v, want ErrDecrypt", err)
			}
			if _, _, err := a.Feed(other); !errors.Is(err, ErrOtherConnection) {
				t.Errorf("other connection's datagram: %v, want ErrOtherConnection", err)
			}
		}
	}
}

func sizes(ds [][]byte) []int {
	var s []int
	for _, d := range ds {
		s = append(s, len(d))
	}
	return s
}
