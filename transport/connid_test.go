package transport

import (
	"bytes"
	"testing"
)

// Every connection ID one socket issues starts with the socket's prefix
// (what a gateway routes by) and is otherwise random; two sockets differ.
func TestConnIDsShareTheSocketPrefix(t *testing.T) {
	g, other := newConnIDs(), newConnIDs()
	if g.prefix == other.prefix {
		t.Fatalf("two sockets drew the same prefix %x", g.prefix)
	}
	seen := map[string]bool{}
	for range 1000 {
		id, err := g.GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		b := id.Bytes()
		if len(b) != g.ConnectionIDLen() || !bytes.HasPrefix(b, g.prefix[:]) {
			t.Fatalf("connection ID %x: want %d bytes starting with %x", b, g.ConnectionIDLen(), g.prefix)
		}
		if seen[string(b)] {
			t.Fatalf("connection ID %x issued twice", b)
		}
		seen[string(b)] = true
	}
}
