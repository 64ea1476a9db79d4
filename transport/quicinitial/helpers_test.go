package quicinitial

import (
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// readHex reads a testdata file of hex digits (whitespace ignored).
func readHex(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cryptoFrameBytes is a CRYPTO frame carrying data at off.
func cryptoFrameBytes(off uint64, data []byte) []byte {
	b := appendVarint([]byte{frameCrypto}, off)
	b = appendVarint(b, uint64(len(data)))
	return append(b, data...)
}

// sealSpec describes a client Initial packet for seal.
type sealSpec struct {
	version    uint32
	dcid, scid []byte
	token      []byte
	pn         uint64
	pnLen      int  // 1..4; 0 means 4
	reserved   byte // the reserved header bits (0x0c), normally 0
	payload    []byte
	size       int // pad the payload with PADDING so the packet has this size (0: none)
}

// seal builds a protected client Initial packet, the inverse of what the
// Assembler does. TestSealMatchesRFC checks it against the RFCs' example
// packets, so that the synthetic packets other tests build are what a real
// client would send.
func seal(t testing.TB, s sealSpec) []byte {
	t.Helper()
	if s.version == 0 {
		s.version = Version1
	}
	if s.pnLen == 0 {
		s.pnLen = 4
	}
	keys, err := newInitialKeys(s.version, s.dcid)
	if err != nil {
		t.Fatal(err)
	}
	typeBits := byte(0) // v1 Initial
	if s.version == Version2 {
		typeBits = 1
	}
	hdr := []byte{0xc0 | typeBits<<4 | s.reserved&0x0c | byte(s.pnLen-1), byte(s.version >> 24), byte(s.version >> 16), byte(s.version >> 8), byte(s.version)}
	hdr = append(hdr, byte(len(s.dcid)))
	hdr = append(hdr, s.dcid...)
	hdr = append(hdr, byte(len(s.scid)))
	hdr = append(hdr, s.scid...)
	hdr = appendVarint(hdr, uint64(len(s.token)))
	hdr = append(hdr, s.token...)
	payload := append([]byte(nil), s.payload...)
	// The Length field is always 2 bytes here (as quic-go and the RFC
	// example encode it), so the header size is known before padding.
	lengthAt := len(hdr)
	if pad := s.size - (lengthAt + 2 + s.pnLen + len(payload) + tagLen); pad > 0 {
		payload = append(payload, make([]byte, pad)...)
	}
	// The header protection sample needs 4 bytes after the packet number's
	// start before it.
	if short := 4 - s.pnLen - len(payload); short > 0 {
		payload = append(payload, make([]byte, short)...)
	}
	length := s.pnLen + len(payload) + tagLen
	hdr = append(hdr, 0x40|byte(length>>8), byte(length))
	pnOff := len(hdr)
	for i := s.pnLen - 1; i >= 0; i-- {
		hdr = append(hdr, byte(s.pn>>(8*i)))
	}
	pkt := keys.seal(hdr, pnOff, s.pnLen, s.pn, payload)
	return pkt
}

// padDatagram pads a datagram to MinDatagramSize with zeros after its
// last packet, as clients may do instead of PADDING frames (the Assembler
// reads a zero first byte as a short header and stops there).
func padDatagram(b []byte) []byte {
	if len(b) >= MinDatagramSize {
		return b
	}
	return append(b, make([]byte, MinDatagramSize-len(b))...)
}
