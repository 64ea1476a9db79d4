package quicinitial

import (
	"crypto/tls"
	"testing"
)

// BenchmarkFeed: the gateway's cost per new flow, on quic-go's real first
// flight (Go's default key shares: a ClientHello in two datagrams of
// 1280 bytes). One op is one whole flow: Reset, both datagrams, the
// Hello; with Reset the Assembler's buffers are reused, as a gateway
// pooling Assemblers would.
func BenchmarkFeed(b *testing.B) {
	ff := recordFirstFlight(b, meshTLS("svc.example", "quicmesh/1", "h3"), nil)
	b.Run("flow", func(b *testing.B) {
		var a Assembler
		b.ReportAllocs()
		b.SetBytes(int64(len(ff.datagrams[0]) * len(ff.datagrams)))
		for b.Loop() {
			a.Reset()
			for _, d := range ff.datagrams {
				if _, _, err := a.Feed(d); err != nil {
					b.Fatal(err)
				}
			}
			if !a.done {
				b.Fatal("incomplete")
			}
		}
	})
	b.Run("flow, new Assembler", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var a Assembler
			for _, d := range ff.datagrams {
				if _, _, err := a.Feed(d); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("PeekInitial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !IsInitial(ff.datagrams[0]) {
				b.Fatal("not an Initial")
			}
		}
	})
	b.Run("forged datagram", func(b *testing.B) {
		// What a datagram that fails authentication costs: key derivation
		// and one decryption, on a flow that has not started.
		d := damage(ff.datagrams[0])
		var a Assembler
		b.ReportAllocs()
		for b.Loop() {
			a.Reset()
			if _, _, err := a.Feed(d); err == nil {
				b.Fatal("damaged datagram taken")
			}
		}
	})
}

func BenchmarkParseClientHello(b *testing.B) {
	msg := goClientHello(b, &tls.Config{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}})
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := ParseClientHello(msg); err != nil {
			b.Fatal(err)
		}
	}
}
