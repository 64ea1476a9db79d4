package inbound

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/internal/bridge"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// portTunnel is a fakeTunnel whose header carried a destination port.
type portTunnel struct {
	*fakeTunnel
	port uint16
}

func (p portTunnel) DestPort() (uint16, bool) { return p.port, p.port != 0 }

// A destination port from a peer reaches the app only on a port the
// configuration declares (AppPorts, or a route's port); any other is
// refused, whatever the tunnel's target or the request's service: the
// inbound side is no proxy to arbitrary local ports.
func TestDestPorts(t *testing.T) {
	routes, err := parseRoutes(Routes{"web": "127.0.0.1:8080", "db": "tcp://127.0.0.1:5432"})
	if err != nil {
		t.Fatal(err)
	}
	ports := newDestPorts(Options{AppPorts: []uint16{9090, 7000}, AppHost: "10.0.0.5"}, routes)
	tests := []struct {
		port uint16
		want route // zero: refused
	}{
		// Named after the caller's target route ("web"), so its rule applies.
		{9090, route{"web", ProtoAuto, "10.0.0.5:9090"}},
		{7000, route{"web", ProtoAuto, "10.0.0.5:7000"}},
		{8080, route{"web", ProtoAuto, "10.0.0.5:8080"}}, // a route's port
		// The port's own route decides whose rule applies, not the target:
		// naming db's port from a tunnel for "web" is judged as "db".
		{5432, route{"db", ProtoAuto, "10.0.0.5:5432"}},
		{22, route{}},
		{4191, route{}}, // the admin port is nobody's app
	}
	for _, tt := range tests {
		reg := prometheus.NewRegistry()
		m := telemetry.New(reg)
		// A tunnel naming the port, for a target that has a route: the
		// port decides.
		a, b := net.Pipe()
		next := &nextTunnel{}
		err := routeTunnel{next: next, routes: routes, ports: ports, metrics: m}.serveTunnel(
			&tunnelCall{str: portTunnel{&fakeTunnel{Conn: a}, tt.port}, target: "web", log: discard})
		a.Close()
		b.Close()
		var f *tunnelFailure
		switch {
		case tt.want == route{} && (!errors.As(err, &f) || f.code != meshcode.UnknownTarget || next.called != nil):
			t.Errorf("tunnel to port %d: err %v, next called %v; want refused with UnknownTarget", tt.port, err, next.called != nil)
		case tt.want != route{} && (err != nil || next.called == nil || next.called.route != tt.want || next.called.destPort != tt.port):
			t.Errorf("tunnel to port %d: err %v, next got %+v; want route %+v", tt.port, err, next.called, tt.want)
		}
		// A request naming the port.
		c, _ := newCall("GET", "web", http.Header{httpx.HeaderDestPort: {itoa(tt.port)}})
		c.destPort = tt.port
		nh := &nextHTTP{}
		_, herr := routeHTTP{next: nh, routes: routes, ports: ports, metrics: m}.serveHTTP(c)
		var hf *httpFailure
		switch {
		case tt.want == route{} && (!errors.As(herr, &hf) || hf.kind != bridge.Unavailable || nh.called != nil):
			t.Errorf("request to port %d: err %v; want refused (503)", tt.port, herr)
		case tt.want != route{} && (herr != nil || nh.called == nil || nh.called.route != tt.want):
			t.Errorf("request to port %d: err %v; want route %+v", tt.port, herr, tt.want)
		}
		result := telemetry.ResultDelivered
		if tt.want == (route{}) {
			result = telemetry.ResultRefused
		}
		if got := counterWith(t, reg, "quicmesh_inbound_connections_total", map[string]string{"source": "mesh", "result": result}); got != 2 {
			t.Errorf("port %d: %v mesh %s counted, want 2", tt.port, got, result)
		}
	}
}

// identify reads the destination port field before stripping the mesh
// fields; a field that is not a port is refused, not ignored.
func TestIdentifyDestPort(t *testing.T) {
	for _, tt := range []struct {
		v    string
		port uint16
		bad  bool
	}{{"", 0, false}, {"8080", 8080, false}, {"0", 0, true}, {"65536", 0, true}, {"x", 0, true}} {
		c, _ := newCall("GET", "web", http.Header{httpx.HeaderDestPort: {tt.v}})
		next := &nextHTTP{}
		identify{next: next}.serveHTTP(c)
		if next.called.destPort != tt.port || next.called.badDestPort != tt.bad || c.r.Header.Get(httpx.HeaderDestPort) != "" {
			t.Errorf("%s %q: port %d, bad %v, field left %q; want %d, %v, stripped", httpx.HeaderDestPort, tt.v,
				next.called.destPort, next.called.badDestPort, c.r.Header.Get(httpx.HeaderDestPort), tt.port, tt.bad)
		}
	}
	c, _ := newCall("GET", "web", nil)
	c.badDestPort = true
	if _, err := (routeHTTP{next: &nextHTTP{}}).serveHTTP(c); err == nil {
		t.Error("routeHTTP took a request with an invalid destination port")
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

// counterWith is the value of the counter name with exactly labels.
func counterWith(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
