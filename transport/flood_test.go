package transport_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/transport"
)

// This file is an attack tool used by tests: it floods a QUIC listener
// with client Initial packets from many source ports, the way an attacker
// who spoofs source addresses would (a spoofer never sees the replies,
// so it never answers a Retry). quic-go's packet code is internal, so the
// packets are built here from RFC 9000 §17.2.2 and RFC 9001 §5.

// initialSaltV1 is QUIC version 1's initial salt (RFC 9001 §5.2).
var initialSaltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}

// floodKind selects what the flood sends.
type floodKind int

const (
	// floodValidInitials sends correctly protected Initials carrying a
	// real TLS 1.3 ClientHello, each with a fresh destination connection
	// ID: every one looks like a new client to the server.
	floodValidInitials floodKind = iota
	// floodGarbage sends long-header Initials whose header parses but
	// whose payload is random bytes that cannot be decrypted.
	floodGarbage
)

func (k floodKind) String() string {
	if k == floodGarbage {
		return "garbage long headers"
	}
	return "valid Initials"
}

// initialBuilder builds client Initial packets.
type initialBuilder struct {
	kind        floodKind
	clientHello []byte // CRYPTO frame payload for floodValidInitials
	scid        []byte
}

func newInitialBuilder(t testing.TB, kind floodKind) *initialBuilder {
	b := &initialBuilder{kind: kind, scid: []byte{0xf1, 0x00, 0xd0, 0x01, 0x02, 0x03, 0x04, 0x05}}
	if kind == floodValidInitials {
		b.clientHello = quicClientHello(t, b.scid)
	}
	return b
}

// quicClientHello produces a real QUIC ClientHello (X25519 only, so it fits
// in one packet) whose transport parameters name scid as the initial
// source connection ID, as a server checks.
func quicClientHello(t testing.TB, scid []byte) []byte {
	t.Helper()
	qc := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         "t.local",
		NextProtos:         []string{transport.ALPN},
		CurvePreferences:   []tls.CurveID{tls.X25519},
		InsecureSkipVerify: true, // never completes: only the ClientHello is used
	}})
	defer qc.Close()
	// initial_source_connection_id (0x0f) is the only parameter a server
	// requires of a client.
	params := append([]byte{0x0f, byte(len(scid))}, scid...)
	qc.SetTransportParameters(params)
	if err := qc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for {
		ev := qc.NextEvent()
		switch ev.Kind {
		case tls.QUICNoEvent:
			t.Fatal("no ClientHello produced")
		case tls.QUICWriteData:
			if ev.Level == tls.QUICEncryptionLevelInitial {
				return append([]byte(nil), ev.Data...)
			}
		}
	}
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context.
func expandLabel(secret []byte, label string, n int) []byte {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(sha256.New, secret, string(info), n)
	if err != nil {
		panic(err)
	}
	return out
}

// packet returns one 1200-byte Initial for a fresh random destination
// connection ID.
func (b *initialBuilder) packet() []byte {
	const size = 1200 // the minimum a server accepts for an Initial
	const pnLen = 4
	dcid := make([]byte, 8)
	rand.Read(dcid)
	hdr := make([]byte, 0, 64)
	hdr = append(hdr, 0xc0|(pnLen-1), 0, 0, 0, 1) // long header, Initial, version 1
	hdr = append(hdr, byte(len(dcid)))
	hdr = append(hdr, dcid...)
	hdr = append(hdr, byte(len(b.scid)))
	hdr = append(hdr, b.scid...)
	hdr = append(hdr, 0)                                              // no token
	payloadLen := size - len(hdr) - 2 /* length field */ - pnLen - 16 /* AEAD tag */
	hdr = binary.BigEndian.AppendUint16(hdr, 0x4000|uint16(pnLen+payloadLen+16))
	pnOffset := len(hdr)
	hdr = append(hdr, 0, 0, 0, 0) // packet number 0

	if b.kind == floodGarbage {
		body := make([]byte, payloadLen+16)
		rand.Read(body)
		return append(hdr, body...)
	}

	payload := make([]byte, payloadLen) // zeros after the frame are PADDING
	frame := append([]byte{0x06, 0x00}, 0x40|byte(len(b.clientHello)>>8), byte(len(b.clientHello)))
	copy(payload[copy(payload, frame):], b.clientHello)

	initial, err := hkdf.Extract(sha256.New, dcid, initialSaltV1)
	if err != nil {
		panic(err)
	}
	secret := expandLabel(initial, "client in", 32)
	key, iv, hp := expandLabel(secret, "quic key", 16), expandLabel(secret, "quic iv", 12), expandLabel(secret, "quic hp", 16)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	pkt := aead.Seal(hdr, iv /* XOR packet number 0 */, payload, hdr)

	hpBlock, _ := aes.NewCipher(hp)
	var mask [16]byte
	hpBlock.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+4+16])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return pkt
}

// buildInitials builds n Initials of one kind, each with its own
// destination connection ID, ahead of a flood: building them costs key
// derivation and encryption per packet, which would otherwise load the
// machine while latency is measured.
func buildInitials(t testing.TB, kind floodKind, n int) [][]byte {
	b := newInitialBuilder(t, kind)
	pkts := make([][]byte, n)
	for i := range pkts {
		pkts[i] = b.packet()
	}
	return pkts
}

// flood sends pkts round-robin to target from sources UDP sockets on
// 127.0.0.1 at about rate packets per second until ctx ends.
//
// While Control is set, packets are cut to 1,100 bytes, below the 1,200 a
// server requires of an Initial, so the server drops them before keeping
// any state: the same sending, socket and packet-processing load as the
// attack, for a baseline under equal load.
type flood struct {
	Control atomic.Bool
	sent    atomic.Int64 // attack packets, not control ones
	started time.Time
	// maxGap is the longest time between two pacing ticks of a sender
	// since the last TakeMaxGap, in nanoseconds: the ticks are 5 ms
	// apart, so a long gap means the process did not get a core.
	maxGap atomic.Int64
	wg     sync.WaitGroup
}

func startFlood(ctx context.Context, t testing.TB, target *net.UDPAddr, pkts [][]byte, rate, sources int) *flood {
	t.Helper()
	conns := make([]*net.UDPConn, sources)
	for i := range conns {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	f := &flood{started: time.Now()}
	// Two senders share the rate; each paces in 5 ms ticks by the number
	// sent so far, so a late tick catches up instead of lowering the rate.
	const senders = 2
	for s := range senders {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			start, sent, next := time.Now(), 0, s
			last := start
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-tick.C:
					// The time it ran, not the tick's (when it was due).
					woke := time.Now()
					gap := int64(woke.Sub(last))
					last = woke
					for m := f.maxGap.Load(); gap > m && !f.maxGap.CompareAndSwap(m, gap); m = f.maxGap.Load() {
					}
					due := int(now.Sub(start).Seconds() * float64(rate) / senders)
					for ; sent < due; sent++ {
						c, pkt := conns[next%len(conns)], pkts[next%len(pkts)]
						next += senders
						if f.Control.Load() {
							pkt = pkt[:1100]
						} else {
							f.sent.Add(1)
						}
						c.WriteToUDP(pkt, target)
						if ctx.Err() != nil {
							return
						}
					}
				}
			}
		}()
	}
	t.Cleanup(func() {
		f.wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return f
}

// TakeMaxGap returns the longest gap between two pacing ticks since the
// previous call.
func (f *flood) TakeMaxGap() time.Duration { return time.Duration(f.maxGap.Swap(0)) }

// wait waits for the senders (ctx must be done) and reports how many
// attack packets they sent.
func (f *flood) wait() (sent int64) {
	f.wg.Wait()
	return f.sent.Load()
}
