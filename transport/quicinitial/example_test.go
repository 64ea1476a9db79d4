package quicinitial_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/quicmesh/quicmesh/transport/quicinitial"
)

// A gateway's read path: the fast header check, then one Assembler per
// pending flow until the ClientHello is complete. The datagram here is
// RFC 9001's example client Initial, whose ClientHello fits in it.
func ExampleAssembler() {
	raw, err := os.ReadFile("testdata/rfc9001-client-initial.hex")
	if err != nil {
		fmt.Println(err)
		return
	}
	datagram, err := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	if err != nil {
		fmt.Println(err)
		return
	}

	hdr, err := quicinitial.PeekInitial(datagram)
	if err != nil {
		fmt.Println("not a new flow:", err)
		return
	}
	// A real gateway looks the flow up by (source address, hdr.DCID)
	// here, creating it on a miss, and keeps the datagram to forward.
	fmt.Printf("flow DCID %x\n", hdr.DCID)

	var a quicinitial.Assembler
	hello, complete, err := a.Feed(datagram)
	switch {
	case err != nil:
		fmt.Println("refused:", err)
	case !complete:
		fmt.Println("need more datagrams")
	default:
		fmt.Printf("route %q, ALPN %q, QUIC version %#x\n", hello.ServerName, hello.ALPN, hello.Version)
	}
	// Output:
	// flow DCID 8394c8f03e515708
	// route "example.com", ALPN ["alpn"], QUIC version 0x1
}
