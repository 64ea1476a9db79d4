package origdst_test

import (
	"errors"
	"net"
	"runtime"
	"testing"

	"github.com/quicmesh/quicmesh/internal/origdst"
)

// A connection nothing redirected has no original destination, over IPv4
// and IPv6 (whether or not conntrack tracks it). Redirected connections
// are tested with the rules that redirect them, in internal/intercept.
func TestNotRedirected(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("original destinations need Linux netfilter")
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Skipf("no %s here: %v", addr, err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			dst, err := origdst.Destination(s.(*net.TCPConn))
			if !errors.Is(err, origdst.ErrNotRedirected) {
				t.Fatalf("Destination = %v, %v; want ErrNotRedirected", dst, err)
			}
		})
	}
}
