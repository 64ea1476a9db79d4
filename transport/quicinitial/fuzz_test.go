package quicinitial

import (
	"bytes"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
)

var sentinels = []error{
	ErrNotInitial, ErrUnsupportedVersion, ErrDecrypt, ErrOtherConnection,
	ErrProtocol, ErrClosed, ErrMalformedHello, ErrTooLarge,
}

// checkResult fails t unless Feed's result keeps the package's promises:
// errors wrap a sentinel, a Hello's server name and protocols are valid.
func checkResult(t *testing.T, h Hello, done bool, err error) {
	t.Helper()
	if err != nil {
		if done {
			t.Fatalf("complete with error %v", err)
		}
		if !slices.ContainsFunc(sentinels, func(s error) bool { return errors.Is(err, s) }) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		return
	}
	if !done {
		return
	}
	if h.ServerName != "" && checkHostName([]byte(h.ServerName)) != nil {
		t.Fatalf("invalid server name %q", h.ServerName)
	}
	if slices.Contains(h.ALPN, "") {
		t.Fatalf("empty ALPN protocol in %q", h.ALPN)
	}
	if h.Version != Version1 && h.Version != Version2 {
		t.Fatalf("version %#x", h.Version)
	}
}

// FuzzFeed feeds the Assembler three ways, each on a fresh flow: raw as a
// datagram (padded to MinDatagramSize), which reaches header parsing and
// header protection; frames as the payload of a well-protected Initial,
// which reaches the frame parser; and hello as the CRYPTO stream, split
// at split into two packets fed in reverse order, which reaches
// reassembly and the ClientHello parser — and must read what
// ParseClientHello reads from the same bytes.
func FuzzFeed(f *testing.F) {
	for _, tc := range rfcPackets(f) {
		f.Add(tc.packet, []byte{framePing}, []byte{}, uint16(0))
	}
	frame := readHex(f, "rfc9001-client-initial-crypto-frame.hex")
	h := testHello()
	f.Add([]byte{}, frame, h, uint16(1000))
	f.Add([]byte{0x40}, []byte{frameACKECN, 5, 0, 1, 0, 1, 1, 1, 2, 3}, frame[4:], uint16(7))
	f.Add(padDatagram(longHeaderBytes(0xc0, Version1, testDCID, nil, 0, 0x44, 0xb0)), []byte{frameConnectionClose, 1, 0, 1, 'x'}, clientHelloWith(sniExt("a"), alpnExt("h3")), uint16(60))
	f.Fuzz(func(t *testing.T, raw, frames, hello []byte, split uint16) {
		var a Assembler
		orig := bytes.Clone(raw)
		got, done, err := a.Feed(padDatagram(raw))
		checkResult(t, got, done, err)
		if !bytes.Equal(orig, raw) {
			t.Fatal("Feed modified the datagram")
		}

		a.Reset()
		got, done, err = a.Feed(datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, payload: frames})))
		checkResult(t, got, done, err)

		a.Reset()
		s := min(int(split), len(hello))
		second := datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, pn: 1, payload: cryptoFrameBytes(uint64(s), hello[s:])}))
		first := datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, pn: 0, payload: cryptoFrameBytes(0, hello[:s])}))
		got, done, err = a.Feed(second)
		checkResult(t, got, done, err)
		if err == nil && !done {
			got, done, err = a.Feed(first)
			checkResult(t, got, done, err)
		}
		// The same bytes through ParseClientHello: what Feed must have said.
		if len(hello) < 4 {
			if done {
				t.Fatalf("complete from %d CRYPTO bytes", len(hello))
			}
			return
		}
		need := 4 + (int(hello[1])<<16 | int(hello[2])<<8 | int(hello[3]))
		switch {
		case hello[0] != handshakeTypeClientHello:
			if !errors.Is(err, ErrMalformedHello) {
				t.Fatalf("handshake type %d: %v, %v; want ErrMalformedHello", hello[0], done, err)
			}
		case need > DefaultMaxCryptoBytes || len(hello) > DefaultMaxCryptoBytes:
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("ClientHello of %d bytes in %d: %v, %v; want ErrTooLarge", need, len(hello), done, err)
			}
		case need > len(hello):
			if done || err != nil {
				t.Fatalf("ClientHello of %d bytes, %d sent: %v, %v; want incomplete", need, len(hello), done, err)
			}
		default:
			want, wantErr := ParseClientHello(hello[:need])
			if (err != nil) != (wantErr != nil) || err == nil && (!done || got.ServerName != want.ServerName || !slices.Equal(got.ALPN, want.ALPN)) {
				t.Fatalf("Feed: %+v, %v, %v; ParseClientHello: %+v, %v", got, done, err, want, wantErr)
			}
		}
	})
}

// FuzzClientHello: ParseClientHello never panics, refuses only with
// ErrMalformedHello, returns valid names, and agrees with crypto/tls
// wherever crypto/tls accepts the message.
func FuzzClientHello(f *testing.F) {
	f.Add(readHex(f, "rfc9001-client-initial-crypto-frame.hex")[4:])
	f.Add(goClientHello(f, &tls.Config{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}}))
	f.Add(clientHelloWith(sniExt("a"), alpnExt("x", "y"), ext(0xfe0d, []byte{1})))
	f.Add(clientHelloWith())
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := ParseClientHello(msg)
		if err != nil {
			if !errors.Is(err, ErrMalformedHello) {
				t.Fatalf("error wraps no ErrMalformedHello: %v", err)
			}
		} else {
			if h.ServerName != "" && checkHostName([]byte(h.ServerName)) != nil {
				t.Fatalf("invalid server name %q", h.ServerName)
			}
			if slices.Contains(h.ALPN, "") || h.ALPN != nil && len(h.ALPN) == 0 {
				t.Fatalf("ALPN %q", h.ALPN)
			}
		}
		checkAgreesWithCryptoTLS(t, msg)
	})
}
