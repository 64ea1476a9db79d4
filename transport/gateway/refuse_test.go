package gateway

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// refusingHello is fakeHello that can refuse its flow: the refusal
// names the server name and reason.
type refusingHello struct{ fakeHello }

func (h *refusingHello) Refusal(reason string) ([]byte, error) {
	return []byte("REFUSED " + h.name + ": " + reason), nil
}

// A flow the relay cannot route is answered with its reader's refusal
// (for QUIC: CONNECTION_CLOSE in an Initial), counted; a reader that
// cannot refuse gets nothing, as before.
func TestUnroutableFlowsAreRefused(t *testing.T) {
	a := newUpstream(t)
	for _, tc := range []struct {
		name    string
		sni     string
		dialErr bool
		drop    string
		want    string
	}{
		{name: "no route", sni: "nobody", drop: DropNoRoute, want: "REFUSED nobody: quicmesh gateway: no route"},
		{name: "destination socket", sni: "a", dialErr: true, drop: DropUpstream, want: "REFUSED a: quicmesh gateway: destination unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, mapRouter{"a": a.addr()}, func(c *Config) {
				c.NewHelloReader = func() HelloReader { return &refusingHello{} }
				if tc.dialErr {
					c.DialUpstream = func(netip.AddrPort) (*net.UDPConn, error) { return nil, errors.New("no sockets left") }
				}
			})
			c := h.client()
			h.send(c, initial("SNI="+tc.sni+";"))
			c.SetReadDeadline(testkit.HangGuard(t))
			buf := make([]byte, 2048)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("no refusal: %v", err)
			}
			if got := string(buf[:n]); got != tc.want {
				t.Fatalf("refusal %q, want %q", got, tc.want)
			}
			h.waitDrops(tc.drop, 1)
			if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_refusals_total"); got != 1 {
				t.Errorf("quicmesh_gateway_refusals_total = %v, want 1", got)
			}
			h.waitFlows(0, 0)
		})
	}
	t.Run("reader that cannot refuse", func(t *testing.T) {
		h := newHarness(t, mapRouter{}, nil)
		c := h.client()
		h.send(c, initial("SNI=nobody;"))
		h.waitDrops(DropNoRoute, 1)
		// The refusal is sent before the drop is counted: none now
		// means none.
		if got := testkit.MetricSum(t, h.reg, "quicmesh_gateway_refusals_total"); got != 0 {
			t.Errorf("quicmesh_gateway_refusals_total = %v, want 0", got)
		}
	})
}
