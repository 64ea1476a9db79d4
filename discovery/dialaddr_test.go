package discovery

import "testing"

// Endpoints behind one gateway share its address: the server name must
// make them different peers (keys) and reach the transport intact.
func TestDialAddrCarriesServerName(t *testing.T) {
	const id = "spiffe://west.local/ns/default/sa/echo"
	direct := Endpoint{Addr: "10.0.0.1:4143", Identity: id}
	a := Endpoint{Addr: "[2001:db8::1]:4443", ServerName: "e-a.echo.gw.quicmesh.invalid", Identity: id}
	b := Endpoint{Addr: "[2001:db8::1]:4443", ServerName: "e-b.echo.gw.quicmesh.invalid", Identity: id}
	if a.Key() == b.Key() {
		t.Fatalf("two endpoints behind one gateway share the key %q", a.Key())
	}
	if a.Equal(b) {
		t.Fatal("endpoints with different server names compare equal")
	}
	for _, tt := range []struct {
		ep             Endpoint
		dial, addr, sn string
	}{
		{direct, "10.0.0.1:4143", "10.0.0.1:4143", ""},
		{a, "e-a.echo.gw.quicmesh.invalid@[2001:db8::1]:4443", "[2001:db8::1]:4443", "e-a.echo.gw.quicmesh.invalid"},
	} {
		if got := tt.ep.DialAddr(); got != tt.dial {
			t.Errorf("DialAddr = %q, want %q", got, tt.dial)
		}
		addr, sn := SplitDialAddr(tt.ep.DialAddr())
		if addr != tt.addr || sn != tt.sn {
			t.Errorf("SplitDialAddr(%q) = %q, %q; want %q, %q", tt.ep.DialAddr(), addr, sn, tt.addr, tt.sn)
		}
	}
	// What the pool reports a failure with (the dial address) finds the
	// endpoint's key again, as the outbound proxy's PeerFailed does.
	if got := (Endpoint{Addr: a.DialAddr(), Identity: id}).Key(); got != a.Key() {
		t.Errorf("key from the dial address = %q, want %q", got, a.Key())
	}
}
