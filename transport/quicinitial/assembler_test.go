package quicinitial

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

var (
	testDCID = []byte{0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8}
	testSCID = []byte{0x51, 0x52, 0x53, 0x54}
)

// testHello is a ClientHello that needs two Initial packets, like one with
// a post-quantum key share (the padding extension stands in for it).
func testHello() []byte {
	return clientHelloWith(sniExt("svc.example"), alpnExt("quicmesh/1", "h3"), ext(21, make([]byte, 1800)))
}

var testHelloWant = Hello{ServerName: "svc.example", ALPN: []string{"quicmesh/1", "h3"}, DCID: testDCID, SCID: testSCID, Version: Version1}

// initial is a v1 Initial of the test connection with packet number pn
// (2 bytes on the wire) and these frames.
func initial(t testing.TB, pn uint64, frames ...[]byte) []byte {
	return seal(t, sealSpec{dcid: testDCID, scid: testSCID, pn: pn, pnLen: 2, payload: bytes.Join(frames, nil)})
}

// datagram coalesces packets and pads the datagram to MinDatagramSize.
func datagram(packets ...[]byte) []byte { return padDatagram(bytes.Join(packets, nil)) }

// longHeaderBytes is an unprotected long header of any type, for packets
// the Assembler must skip or refuse before decrypting.
func longHeaderBytes(first byte, version uint32, dcid, scid []byte, rest ...byte) []byte {
	b := []byte{first, byte(version >> 24), byte(version >> 16), byte(version >> 8), byte(version)}
	b = append(b, u8vec(dcid)...)
	b = append(b, u8vec(scid)...)
	return append(b, rest...)
}

// zeroRTT is a 0-RTT packet (v1) with an opaque body of n bytes.
func zeroRTT(n int) []byte {
	body := bytes.Repeat([]byte{0xee}, n)
	return append(longHeaderBytes(0xd3, Version1, testDCID, testSCID, 0x40|byte(n>>8), byte(n)), body...)
}

func damage(p []byte) []byte {
	p = bytes.Clone(p)
	p[len(p)-20] ^= 0x80
	return p
}

// step is one datagram fed and what Feed must say: complete, or an error
// matching err (errors.Is).
type step struct {
	datagram []byte
	done     bool
	err      error
}

func TestFeed(t *testing.T) {
	h := testHello()
	part1, part2 := h[:1000], h[1000:]
	p0 := initial(t, 0, cryptoFrameBytes(0, part1))
	p1 := initial(t, 1, cryptoFrameBytes(1000, part2))
	otherDCID := seal(t, sealSpec{dcid: []byte("other-conn"), scid: testSCID, payload: cryptoFrameBytes(0, clientHelloWith(sniExt("evil.example")))})
	ok0, ok1 := step{datagram: datagram(p0)}, step{datagram: datagram(p1), done: true}

	var smallFrames [][]byte // part1 in 50-byte frames, last first
	for off := 0; off < len(part1); off += 50 {
		smallFrames = append(smallFrames, cryptoFrameBytes(uint64(off), part1[off:min(off+50, len(part1))]))
	}
	slices.Reverse(smallFrames)

	for _, tc := range []struct {
		name   string
		limits Limits
		steps  []step
	}{
		{"two datagrams", Limits{}, []step{ok0, ok1}},
		{"two datagrams reversed", Limits{}, []step{{datagram: datagram(p1)}, {datagram: datagram(p0), done: true}}},
		{"both packets coalesced, second first", Limits{}, []step{{datagram: datagram(p1, p0), done: true}}},
		{"small frames out of order in one packet", Limits{}, []step{
			{datagram: datagram(initial(t, 0, smallFrames...))}, ok1,
		}},
		{"overlapping retransmissions", Limits{}, []step{
			{datagram: datagram(initial(t, 0, cryptoFrameBytes(0, h[:800])))},
			{datagram: datagram(initial(t, 1, cryptoFrameBytes(400, h[400:1500])))},
			{datagram: datagram(initial(t, 2, cryptoFrameBytes(1200, h[1200:]))), done: true},
		}},
		{"PING, ACK, ACK_ECN and PADDING around CRYPTO", Limits{}, []step{
			{datagram: datagram(initial(t, 0,
				[]byte{framePadding, framePadding, framePing},
				[]byte{frameACK, 5, 0, 1, 0, 1, 1}, // largest 5, delay 0, 1 more range; first 0; gap 1, length 1
				cryptoFrameBytes(0, part1),
				[]byte{frameACKECN, 5, 0, 0, 0, 1, 2, 3},
			))},
			{datagram: datagram(initial(t, 1, cryptoFrameBytes(1000, part2), []byte{framePing})), done: true},
		}},
		{"0-RTT packet coalesced between Initials is skipped", Limits{}, []step{{datagram: datagram(p0, zeroRTT(100), p1), done: true}}},
		{"another connection's coalesced Initial is ignored", Limits{}, []step{{datagram: datagram(p0, otherDCID)}, ok1}},
		{"a damaged coalesced packet is dropped alone", Limits{}, []step{{datagram: datagram(p0, damage(p1))}, ok1}},
		{"a damaged datagram of another DCID does not pin the flow", Limits{}, []step{
			{datagram: datagram(damage(otherDCID)), err: ErrDecrypt}, ok0, ok1,
		}},
		{"packet numbers in 1 and 2 bytes", Limits{}, []step{
			{datagram: datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, pn: 300, pnLen: 2, payload: cryptoFrameBytes(0, part1)}))},
			{datagram: datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, pn: 301, pnLen: 1, payload: cryptoFrameBytes(1000, part2)})), done: true},
		}},
		{"Initial with a token (from NEW_TOKEN or a Retry)", Limits{}, []step{
			{datagram: datagram(seal(t, sealSpec{dcid: testDCID, scid: testSCID, token: bytes.Repeat([]byte{0x7a}, 90), payload: cryptoFrameBytes(0, part1)}))}, ok1,
		}},
		{"ACK-only Initial", Limits{}, []step{{datagram: datagram(initial(t, 5, []byte{frameACK, 0, 0, 0, 0}))}, ok0, ok1}},
		{"packets past the 8th of a datagram are ignored", Limits{}, []step{
			{datagram: datagram(p0, initial(t, 2, []byte{framePing}), initial(t, 3, []byte{framePing}), initial(t, 4, []byte{framePing}),
				initial(t, 5, []byte{framePing}), initial(t, 6, []byte{framePing}), initial(t, 7, []byte{framePing}), zeroRTT(10), p1)},
			ok1,
		}},
		{"complete: later datagrams return the Hello", Limits{}, []step{ok0, ok1, {datagram: []byte("garbage"), done: true}, {datagram: datagram(otherDCID), done: true}}},

		// Datagrams refused alone: the flow goes on.
		{"below 1200 bytes", Limits{}, []step{{datagram: p0, err: ErrNotInitial}, ok0, ok1}},
		{"short header", Limits{}, []step{{datagram: padDatagram([]byte{0x40, 1, 2, 3}), err: ErrNotInitial}, ok0, ok1}},
		{"version negotiation", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0x80, 0, testSCID, testDCID, 0, 0, 0, 1)), err: ErrNotInitial}, ok0, ok1}},
		{"unsupported version", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, 0xff00001d, testDCID, testSCID, 0, 0x40, 0x20)), err: ErrUnsupportedVersion}, ok0, ok1}},
		{"Retry", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xf0, Version1, testSCID, testDCID, 1, 2, 3)), err: ErrNotInitial}, ok0, ok1}},
		{"v2 Retry (v1's Initial type bits)", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, Version2, testSCID, testDCID, 1, 2, 3)), err: ErrNotInitial}, ok0, ok1}},
		{"0-RTT first", Limits{}, []step{{datagram: datagram(zeroRTT(100), p0), err: ErrNotInitial}, ok0, ok1}},
		{"DCID of 21 bytes", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, Version1, make([]byte, 21), nil, 0, 0x40, 0x20)), err: ErrNotInitial}, ok0, ok1}},
		{"token past the datagram", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, Version1, testDCID, nil, 0x50, 0x00)), err: ErrNotInitial}, ok0, ok1}},
		{"length past the datagram", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, Version1, testDCID, nil, 0, 0x50, 0x00)), err: ErrNotInitial}, ok0, ok1}},
		{"too short for the sample", Limits{}, []step{{datagram: padDatagram(longHeaderBytes(0xc0, Version1, testDCID, nil, 0, 19)), err: ErrNotInitial}, ok0, ok1}},
		{"damaged", Limits{}, []step{{datagram: datagram(damage(p0)), err: ErrDecrypt}, ok0, ok1}},
		{"another connection", Limits{}, []step{ok0, {datagram: datagram(otherDCID), err: ErrOtherConnection}, ok1}},
		{"another version", Limits{}, []step{ok0, {datagram: datagram(seal(t, sealSpec{version: Version2, dcid: testDCID, scid: testSCID, payload: cryptoFrameBytes(1000, part2)})), err: ErrOtherConnection}, ok1}},

		// Errors that end the flow.
		{"STREAM frame", Limits{}, []step{{datagram: datagram(initial(t, 0, cryptoFrameBytes(0, part1), []byte{0x08, 0})), err: ErrProtocol}, {datagram: ok1.datagram, err: ErrProtocol}}},
		{"NEW_TOKEN frame", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{0x07, 1, 'x'})), err: ErrProtocol}}},
		{"HANDSHAKE_DONE frame", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{0x1e})), err: ErrProtocol}}},
		{"application CONNECTION_CLOSE", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{0x1d, 0, 0})), err: ErrProtocol}}},
		{"CONNECTION_CLOSE", Limits{}, []step{ok0, {datagram: datagram(initial(t, 1, []byte{frameConnectionClose, 0x0a, 0, 3, 'b', 'y', 'e'})), err: ErrClosed}, {datagram: ok1.datagram, err: ErrClosed}}},
		{"truncated CONNECTION_CLOSE", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{frameConnectionClose, 0x0a, 0, 0x40, 9})), err: ErrProtocol}}},
		{"truncated CRYPTO", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{frameCrypto, 0, 0x10, 'a'})), err: ErrProtocol}}},
		{"truncated ACK", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{frameACK, 5})), err: ErrProtocol}}},
		{"ACK range count past the packet", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{frameACK, 5, 0, 0xbf, 0xff, 0xff, 0xff, 0})), err: ErrProtocol}}},
		{"reserved bits", Limits{}, []step{{datagram: datagram(seal(t, sealSpec{dcid: testDCID, payload: cryptoFrameBytes(0, part1), reserved: 0x08})), err: ErrProtocol}}},
		{"no frames", Limits{}, []step{{datagram: datagram(seal(t, sealSpec{dcid: testDCID, pnLen: 4})), err: ErrProtocol}}},
		{"CRYPTO past the limit", Limits{}, []step{{datagram: datagram(initial(t, 0, cryptoFrameBytes(DefaultMaxCryptoBytes, []byte{1}))), err: ErrTooLarge}}},
		{"CRYPTO offset near 2^62", Limits{}, []step{{datagram: datagram(initial(t, 0, []byte{frameCrypto, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 'x'})), err: ErrTooLarge}}},
		{"ClientHello longer than the limit", Limits{}, []step{{datagram: datagram(initial(t, 0, cryptoFrameBytes(0, []byte{1, 0x01, 0, 0}))), err: ErrTooLarge}}},
		{"ClientHello longer than a custom limit", Limits{MaxCryptoBytes: 1500}, []step{{datagram: ok0.datagram, err: ErrTooLarge}, {datagram: ok1.datagram, err: ErrTooLarge}}},
		{"too many datagrams", Limits{MaxDatagrams: 2}, []step{ok0, ok0, {datagram: ok1.datagram, err: ErrTooLarge}}},
		{"too many datagrams, even refused ones", Limits{MaxDatagrams: 2}, []step{{datagram: []byte("x"), err: ErrNotInitial}, {datagram: []byte("x"), err: ErrNotInitial}, {datagram: ok0.datagram, err: ErrTooLarge}}},
		{"not a ClientHello", Limits{}, []step{{datagram: datagram(initial(t, 0, cryptoFrameBytes(0, []byte{2, 0, 0, 1, 0}))), err: ErrMalformedHello}}},
		{"malformed ClientHello", Limits{}, []step{{datagram: datagram(initial(t, 0, cryptoFrameBytes(0, clientHelloWith(sniExt("a."))))), err: ErrMalformedHello}, {datagram: ok1.datagram, err: ErrMalformedHello}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Assembler{Limits: tc.limits}
			for i, s := range tc.steps {
				orig := bytes.Clone(s.datagram)
				got, done, err := a.Feed(s.datagram)
				if !bytes.Equal(orig, s.datagram) {
					t.Fatalf("step %d: Feed modified the datagram", i)
				}
				if s.err != nil {
					if !errors.Is(err, s.err) || done {
						t.Fatalf("step %d: Feed = %v, %v; want error %v", i, done, err, s.err)
					}
					continue
				}
				if err != nil || done != s.done {
					t.Fatalf("step %d: Feed = %v, %v; want complete = %v", i, done, err, s.done)
				}
				if done && !equalHello(got, testHelloWant) {
					t.Fatalf("step %d: Hello %+v, want %+v", i, got, testHelloWant)
				}
			}
		})
	}
}

// TestReset: a reset Assembler reads another flow as a new one would,
// and Hellos it returned before stay as they were.
func TestReset(t *testing.T) {
	h := testHello()
	var a Assembler
	for _, d := range [][]byte{
		datagram(initial(t, 0, cryptoFrameBytes(0, h[:1000]))),
		datagram(initial(t, 1, cryptoFrameBytes(1000, h[1000:]))),
	} {
		if _, _, err := a.Feed(d); err != nil {
			t.Fatal(err)
		}
	}
	first, done, _ := a.Feed(nil)
	if !done {
		t.Fatal("first flow incomplete")
	}
	a.Reset()
	dcid := []byte("second-flow-dcid")
	other := clientHelloWith(sniExt("other.example"), alpnExt("h3"))
	// A shorter ClientHello in the reused buffer: stale bytes past it
	// must not count as received.
	d := datagram(seal(t, sealSpec{dcid: dcid, payload: cryptoFrameBytes(0, other[:40])}))
	if _, done, err := a.Feed(d); done || err != nil {
		t.Fatalf("second flow, first half: %v, %v", done, err)
	}
	d = datagram(seal(t, sealSpec{dcid: dcid, pn: 1, payload: cryptoFrameBytes(40, other[40:])}))
	second, done, err := a.Feed(d)
	if err != nil || !done || second.ServerName != "other.example" || !bytes.Equal(second.DCID, dcid) {
		t.Fatalf("second flow: %+v, %v, %v", second, done, err)
	}
	if !equalHello(first, testHelloWant) {
		t.Errorf("first Hello changed after Reset: %+v", first)
	}
}

// TestFeedTruncated: every prefix of a real packet, and of a datagram of
// two coalesced packets, is refused or taken without a panic, and a
// truncated lone packet is never taken.
func TestFeedTruncated(t *testing.T) {
	h := testHello()
	p0 := initial(t, 0, cryptoFrameBytes(0, h[:1000]))
	p1 := initial(t, 1, cryptoFrameBytes(1000, h[1000:]))
	whole := append(bytes.Clone(p0), p1...)
	for n := range len(whole) {
		var a Assembler
		_, done, err := a.Feed(padDatagram(bytes.Clone(whole[:n])))
		if n < len(p0) && err == nil {
			t.Fatalf("cut to %d bytes: taken", n)
		}
		if n >= len(p0) && (err != nil || done) {
			// The first packet is whole; the cut second one is skipped.
			t.Fatalf("cut to %d bytes (first packet whole): %v, %v", n, done, err)
		}
	}
}
