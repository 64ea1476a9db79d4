package quicinitial

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// TestServerInitialKeysRFC: the server's Initial keys of RFC 9001 A.1,
// which CloseInitial protects its packet with.
func TestServerInitialKeysRFC(t *testing.T) {
	secret, err := initialSecret(Version1, rfcDCID, labelServer)
	if err != nil {
		t.Fatal(err)
	}
	if want := mustHex(t, "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"); !bytes.Equal(secret, want) {
		t.Errorf("server_initial_secret %x, want %x", secret, want)
	}
	keys, err := newInitialKeysFor(Version1, rfcDCID, labelServer)
	if err != nil {
		t.Fatal(err)
	}
	if want := mustHex(t, "0ac1493ca1905853b0bba03e"); !bytes.Equal(keys.iv[:], want) {
		t.Errorf("server iv %x, want %x", keys.iv, want)
	}
}

// openServerInitial undoes CloseInitial as a client would: it parses the
// long header, removes header protection with the server's keys for the
// client's original DCID and decrypts the payload.
func openServerInitial(t *testing.T, pkt []byte, origDCID []byte) (longHeader, []byte) {
	t.Helper()
	h, err := parseLongHeader(pkt)
	if err != nil {
		t.Fatalf("parsing the refusal's header: %v", err)
	}
	if h.typ != typeInitial || h.end != len(pkt) {
		t.Fatalf("packet type %d, end %d of %d: want one Initial filling the datagram", h.typ, h.end, len(pkt))
	}
	keys, err := newInitialKeysFor(h.Version, origDCID, labelServer)
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Clone(pkt)
	var mask [aesBlock]byte
	keys.hp.Encrypt(mask[:], buf[h.pnOffset+4:h.pnOffset+4+sampleLen])
	buf[0] ^= mask[0] & 0x0f
	if buf[0]&0x0c != 0 {
		t.Errorf("reserved bits set: %08b", buf[0])
	}
	pnLen := int(buf[0]&3) + 1
	var pn uint64
	for i := range pnLen {
		buf[h.pnOffset+i] ^= mask[1+i]
		pn = pn<<8 | uint64(buf[h.pnOffset+i])
	}
	hdrEnd := h.pnOffset + pnLen
	nonce := keys.nonce(pn)
	plain, err := keys.aead.Open(nil, nonce[:], buf[hdrEnd:], buf[:hdrEnd])
	if err != nil {
		t.Fatalf("decrypting the refusal with the server's Initial keys: %v", err)
	}
	return h, plain
}

func TestCloseInitial(t *testing.T) {
	dcid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	scid := []byte{9, 10, 11, 12}
	long := strings.Repeat("r", 300)
	for _, tc := range []struct {
		name       string
		hello      Hello
		code       uint64
		reason     string
		wantReason string
		wantErr    error
	}{
		{name: "v1", hello: Hello{Version: Version1, DCID: dcid, SCID: scid}, code: ConnectionRefused, reason: "no route", wantReason: "no route"},
		{name: "v2", hello: Hello{Version: Version2, DCID: dcid, SCID: scid}, code: ConnectionRefused, reason: "no route", wantReason: "no route"},
		{name: "empty reason and SCID", hello: Hello{Version: Version1, DCID: dcid}, code: ConnectionRefused},
		{name: "two-byte error code", hello: Hello{Version: Version1, DCID: dcid, SCID: scid}, code: 0x1234, reason: "x", wantReason: "x"},
		{name: "reason truncated", hello: Hello{Version: Version1, DCID: dcid, SCID: scid}, code: ConnectionRefused, reason: long, wantReason: long[:maxReasonLen]},
		{name: "unknown version", hello: Hello{Version: 0xff00001d, DCID: dcid}, code: ConnectionRefused, wantErr: ErrUnsupportedVersion},
		{name: "DCID too long", hello: Hello{Version: Version1, DCID: make([]byte, 21)}, code: ConnectionRefused, wantErr: errAny},
		{name: "error code too large", hello: Hello{Version: Version1, DCID: dcid}, code: 1 << 62, wantErr: errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, err := CloseInitial(tc.hello, tc.code, tc.reason)
			if tc.wantErr != nil {
				if err == nil || tc.wantErr != errAny && !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h, plain := openServerInitial(t, pkt, tc.hello.DCID)
			if h.Version != tc.hello.Version || !bytes.Equal(h.DCID, tc.hello.SCID) || !bytes.Equal(h.SCID, tc.hello.DCID) {
				t.Errorf("header version %x DCID %x SCID %x; want %x, the client's SCID %x and DCID %x", h.Version, h.DCID, h.SCID, tc.hello.Version, tc.hello.SCID, tc.hello.DCID)
			}
			want := appendVarint([]byte{0x1c}, tc.code)
			want = appendVarint(want, 0)
			want = appendVarint(want, uint64(len(tc.wantReason)))
			want = append(want, tc.wantReason...)
			if !bytes.Equal(plain, want) {
				t.Errorf("payload % x, want one CONNECTION_CLOSE % x", plain, want)
			}
			// The client's own Initial keys must not open it: the
			// packet is the server's.
			if _, _, err := (&Assembler{}).Feed(padDatagram(pkt)); err == nil {
				t.Error("the Assembler (client keys) accepted the server's packet")
			}
		})
	}
}

// errAny in a want field: any error.
var errAny = errors.New("any error")

// TestCloseInitialEndsQuicGoDial: a real quic-go client that gets
// CloseInitial's packet in answer to its first flight fails its dial at
// once with the remote CONNECTION_REFUSED (the error a mesh sidecar
// reads as "try another endpoint"), not after its handshake timeout.
func TestCloseInitialEndsQuicGoDial(t *testing.T) {
	for _, version := range []quic.Version{quic.Version1, quic.Version2} {
		t.Run(version.String(), func(t *testing.T) {
			ctx := testkit.HangCtx(t)
			server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			// The handshake timeout is what the dial would wait without
			// the refusal; the test bounds nothing by wall time, it
			// checks that the dial did not end by timing out.
			quicConf := &quic.Config{Versions: []quic.Version{version}, HandshakeIdleTimeout: time.Minute}
			dialed := make(chan error, 1)
			go func() {
				conn, err := quic.DialAddr(ctx, server.LocalAddr().String(), &tls.Config{ServerName: "x.test", NextProtos: []string{"t"}, InsecureSkipVerify: true}, quicConf)
				if err == nil {
					_ = conn.CloseWithError(0, "")
				}
				dialed <- err
			}()
			var a Assembler
			buf := make([]byte, 64<<10)
			for {
				n, from, err := server.ReadFromUDP(buf)
				if err != nil {
					t.Fatal(err)
				}
				h, done, err := a.Feed(buf[:n])
				if err != nil {
					t.Fatal(err)
				}
				if !done {
					continue
				}
				pkt, err := CloseInitial(h, ConnectionRefused, "no route")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := server.WriteToUDP(pkt, from); err != nil {
					t.Fatal(err)
				}
				break
			}
			var te *quic.TransportError
			select {
			case err = <-dialed:
			case <-ctx.Done():
				t.Fatal("the dial did not end after the refusal")
			}
			if !errors.As(err, &te) || !te.Remote || te.ErrorCode != quic.ConnectionRefused || te.ErrorMessage != "no route" {
				t.Fatalf("dial error %v (%T), want the remote CONNECTION_REFUSED \"no route\"", err, err)
			}
		})
	}
}
