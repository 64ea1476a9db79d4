package quicinitial

import (
	"bytes"
	"slices"
	"testing"
)

// The examples of RFC 9001 appendix A and RFC 9369 appendix A: the same
// client Initial (DCID 8394c8f03e515708, packet number 2, a ClientHello
// for example.com offering ALPN "alpn", padded to 1200 bytes) protected
// under QUIC v1 and v2. testdata holds the protected packets and the
// CRYPTO frame they carry.
var rfcDCID = []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08}

func TestInitialKeysRFC(t *testing.T) {
	for _, tc := range []struct {
		name                string
		version             uint32
		secret, key, iv, hp string
	}{
		{
			name:    "v1 (RFC 9001 A.1)",
			version: Version1,
			secret:  "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
			key:     "1f369613dd76d5467730efcbe3b1a22d",
			iv:      "fa044b2f42a3fd3b46fb255c",
			hp:      "9f50449e04a0e810283a1e9933adedd2",
		},
		{
			name:    "v2 (RFC 9369 A.1)",
			version: Version2,
			secret:  "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
			key:     "8b1a0bc121284290a29e0971b5cd045d",
			iv:      "91f73e2351d8fa91660e909f",
			hp:      "45b95e15235d6f45a6b19cbcb0294ba9",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secret, err := clientInitialSecret(tc.version, rfcDCID)
			if err != nil {
				t.Fatal(err)
			}
			if want := mustHex(t, tc.secret); !bytes.Equal(secret, want) {
				t.Errorf("client_initial_secret %x, want %x", secret, want)
			}
			prefix := "quic "
			if tc.version == Version2 {
				prefix = "quicv2 "
			}
			for _, l := range []struct {
				label, want string
			}{{"key", tc.key}, {"iv", tc.iv}, {"hp", tc.hp}} {
				want := mustHex(t, l.want)
				got, err := expandLabel(secret, prefix+l.label, len(want))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s %x, want %x", l.label, got, want)
				}
			}
			keys, err := newInitialKeys(tc.version, rfcDCID)
			if err != nil {
				t.Fatal(err)
			}
			if want := mustHex(t, tc.iv); !bytes.Equal(keys.iv[:], want) {
				t.Errorf("keys.iv %x, want %x", keys.iv, want)
			}
		})
	}
}

func rfcPackets(t testing.TB) []struct {
	name    string
	version uint32
	packet  []byte
} {
	return []struct {
		name    string
		version uint32
		packet  []byte
	}{
		{"v1 (RFC 9001 A.2)", Version1, readHex(t, "rfc9001-client-initial.hex")},
		{"v2 (RFC 9369 A.2)", Version2, readHex(t, "rfc9369-client-initial.hex")},
	}
}

// TestRFCClientInitial: decrypting the RFCs' example packet yields their
// ClientHello, byte for byte, and its server name and ALPN.
func TestRFCClientInitial(t *testing.T) {
	frame := readHex(t, "rfc9001-client-initial-crypto-frame.hex")
	// The frame is CRYPTO (06), offset 0 (00), length 0x00f1 (40f1).
	if !bytes.HasPrefix(frame, []byte{0x06, 0x00, 0x40, 0xf1}) || len(frame) != 4+0xf1 {
		t.Fatalf("testdata frame is not one CRYPTO frame at offset 0: % x", frame[:4])
	}
	clientHello := frame[4:]
	for _, tc := range rfcPackets(t) {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.packet) != 1200 {
				t.Fatalf("example packet of %d bytes, want 1200", len(tc.packet))
			}
			orig := bytes.Clone(tc.packet)
			hdr, err := PeekInitial(tc.packet)
			if err != nil {
				t.Fatalf("PeekInitial: %v", err)
			}
			if hdr.Version != tc.version || !bytes.Equal(hdr.DCID, rfcDCID) || len(hdr.SCID) != 0 {
				t.Errorf("PeekInitial = %+v", hdr)
			}
			var a Assembler
			h, done, err := a.Feed(tc.packet)
			if err != nil || !done {
				t.Fatalf("Feed = %+v, %v, %v", h, done, err)
			}
			if !bytes.Equal(a.crypto[:a.contig], clientHello) {
				t.Errorf("reassembled CRYPTO stream\n%x\nwant the RFC's ClientHello\n%x", a.crypto[:a.contig], clientHello)
			}
			if a.largestPN != 2 {
				t.Errorf("packet number %d, want 2", a.largestPN)
			}
			want := Hello{ServerName: "example.com", ALPN: []string{"alpn"}, DCID: rfcDCID, SCID: []byte{}, Version: tc.version}
			if !equalHello(h, want) {
				t.Errorf("Hello %+v, want %+v", h, want)
			}
			if !bytes.Equal(tc.packet, orig) {
				t.Error("Feed modified the datagram")
			}
			if h2, err := Parse(tc.packet); err != nil || !equalHello(h2, want) {
				t.Errorf("Parse = %+v, %v", h2, err)
			}
		})
	}
}

// TestSealMatchesRFC: the test sealer reproduces the RFCs' example packets
// from their plaintext, so synthetic packets in other tests are real ones.
func TestSealMatchesRFC(t *testing.T) {
	frame := readHex(t, "rfc9001-client-initial-crypto-frame.hex")
	for _, tc := range rfcPackets(t) {
		t.Run(tc.name, func(t *testing.T) {
			got := seal(t, sealSpec{version: tc.version, dcid: rfcDCID, pn: 2, payload: frame, size: 1200})
			if !bytes.Equal(got, tc.packet) {
				t.Errorf("sealed\n%x\nwant\n%x", got, tc.packet)
			}
		})
	}
}

func TestDecodePacketNumber(t *testing.T) {
	for _, tc := range []struct {
		largest     uint64
		have        bool
		truncated   uint64
		pnLen       int
		want        uint64
		description string
	}{
		{0xa82f30ea, true, 0x9b32, 2, 0xa82f9b32, "RFC 9000 A.3 example"},
		{0, false, 0, 1, 0, "first packet"},
		{0, false, 2, 4, 2, "RFC 9001 example: first packet seen has number 2"},
		{0xff, true, 0x01, 1, 0x101, "next window"},
		{0x1ef, true, 0x05, 1, 0x205, "wraps forward"},
		{0x3ffffffffffffffe, true, 0x00, 1, 0x3fffffffffffff00, "no wrap past 2^62"},
		{0x100, true, 0xff, 1, 0xff, "a late packet just below"},
		{5, true, 3, 1, 3, "retransmitted earlier packet"},
	} {
		if got := decodePacketNumber(tc.largest, tc.have, tc.truncated, tc.pnLen); got != tc.want {
			t.Errorf("%s: decodePacketNumber(%#x, %v, %#x, %d) = %#x, want %#x",
				tc.description, tc.largest, tc.have, tc.truncated, tc.pnLen, got, tc.want)
		}
	}
}

func equalHello(a, b Hello) bool {
	return a.ServerName == b.ServerName && slices.Equal(a.ALPN, b.ALPN) &&
		bytes.Equal(a.DCID, b.DCID) && bytes.Equal(a.SCID, b.SCID) && a.Version == b.Version
}
