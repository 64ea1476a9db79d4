package outbound

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// fakeDestinations is a fixed address index.
type fakeDestinations struct {
	targets map[netip.AddrPort]discovery.Target
	synced  chan struct{}
}

func (d *fakeDestinations) Lookup(dst netip.AddrPort) discovery.Target { return d.targets[dst] }
func (d *fakeDestinations) Synced() <-chan struct{}                    { return d.synced }

// transparentRig is a proxy serving a transparent listener whose next
// accepted connection has the original destination pushed on dst (nil:
// not redirected).
type transparentRig struct {
	ln    net.Listener
	dst   chan *netip.AddrPort
	reg   *prometheus.Registry
	mu    sync.Mutex
	reqs  []*http.Request // what the peers got
	conns []string        // on which peer connection
}

func newTransparentRig(t *testing.T, dests *fakeDestinations, opts Options) *transparentRig {
	t.Helper()
	r := &transparentRig{dst: make(chan *netip.AddrPort, 1), reg: prometheus.NewRegistry()}
	peers := &fakePeers{newConn: func(addr string) *fakeConn {
		return &fakeConn{alive: true, roundTrip: func(req *http.Request) (*http.Response, error) {
			r.mu.Lock()
			r.reqs, r.conns = append(r.reqs, req), append(r.conns, addr)
			r.mu.Unlock()
			return textResponse(req, 200, "ok"), nil
		}}
	}}
	disc := &fakeDiscovery{sets: map[string][]discovery.Endpoint{"web": endpointsAt("10.1.0.6:4143", "10.1.0.7:4143")}}
	p := New(Config{Discovery: disc, Peers: peers, Metrics: telemetry.New(r.reg), Options: opts})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ln = ln
	served := make(chan error, 1)
	go func() {
		served <- p.ServeTransparent(ln, Transparent{Destinations: dests, Original: func(net.Conn) (netip.AddrPort, error) {
			d := <-r.dst
			if d == nil {
				return netip.AddrPort{}, fmt.Errorf("test: %w", origdst.ErrNotRedirected)
			}
			return *d, nil
		}})
	}()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("ServeTransparent: %v", err)
		}
		p.Close()
	})
	return r
}

// get sends one HTTP/1.1 request as if to dst and returns its status, or
// an error when the connection was refused.
func (r *transparentRig) get(dst *netip.AddrPort) (int, error) {
	r.dst <- dst
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

func (r *transparentRig) kind(t *testing.T, kind string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "quicmesh_transparent_outbound_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func ap(s string) *netip.AddrPort { a := netip.MustParseAddrPort(s); return &a }

// The transparent listener maps each original destination through the
// index: a service's virtual IP is balanced over the service with the
// target port carried, a pod IP goes to that endpoint alone with the
// dialled port, an ambiguous address and a connection that was not
// redirected are refused, and an unknown one passes through as it was.
func TestTransparentDestinations(t *testing.T) {
	testkit.CheckLeaks(t)
	eps := endpointsAt("10.1.0.6:4143", "10.1.0.7:4143")
	eps[1].PodIP, eps[1].Ports = netip.MustParseAddr("10.1.0.7"), []uint16{9090}
	dests := &fakeDestinations{synced: make(chan struct{}), targets: map[netip.AddrPort]discovery.Target{
		*ap("10.96.0.10:80"): {Kind: discovery.ServiceTarget, Service: "web", Port: discovery.ServicePort{Port: 80, TargetPort: 8080}},
		*ap("10.1.0.7:9090"): {Kind: discovery.EndpointTarget, Service: "web", Endpoint: eps[1]},
		*ap("10.96.0.99:80"): {Kind: discovery.Ambiguous},
	}}
	close(dests.synced)
	r := newTransparentRig(t, dests, Options{})

	for range 4 {
		if st, err := r.get(ap("10.96.0.10:80")); err != nil || st != 200 {
			t.Fatalf("to the service's virtual IP: %d, %v", st, err)
		}
	}
	for range 4 {
		if st, err := r.get(ap("10.1.0.7:9090")); err != nil || st != 200 {
			t.Fatalf("to the pod IP: %d, %v", st, err)
		}
	}
	r.mu.Lock()
	for i, req := range r.reqs {
		wantPort, pinned := "8080", false
		if i >= 4 {
			wantPort, pinned = "9090", true
		}
		if svc, port := req.Header[httpx.WireService], req.Header[httpx.WireDestPort]; len(svc) != 1 || svc[0] != "web" || len(port) != 1 || port[0] != wantPort {
			t.Errorf("request %d: service %q, port %q; want web, %s", i, svc, port, wantPort)
		}
		if pinned && r.conns[i] != "10.1.0.7:4143" {
			t.Errorf("request %d to the pod IP went to %s, want 10.1.0.7:4143 only", i, r.conns[i])
		}
	}
	r.mu.Unlock()

	if _, err := r.get(ap("10.96.0.99:80")); err == nil {
		t.Error("an ambiguous destination was served")
	}
	if _, err := r.get(nil); err == nil {
		t.Error("a connection that was not redirected was served")
	}

	// Unknown: passed through to where it was going.
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	go func() {
		c, err := app.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	r.dst <- ap(app.Addr().String())
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("\x00\x01not http\n")
	c.Write(msg)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || !bytes.Equal(got, msg) {
		t.Errorf("pass-through echoed %q, %v; want %q", got, err, msg)
	}

	for kind, want := range map[string]float64{telemetry.TransparentService: 4, telemetry.TransparentEndpoint: 4,
		telemetry.TransparentAmbiguous: 1, telemetry.TransparentNotRedirected: 1, telemetry.TransparentPassthrough: 1} {
		if got := r.kind(t, kind); got != want {
			t.Errorf("kind %s counted %v times, want %v", kind, got, want)
		}
	}
}

// Until the index has its first catalog every destination would look
// unknown: connections wait for it (the connect timeout), then are
// refused rather than sent out in plain text.
func TestTransparentWaitsForSync(t *testing.T) {
	testkit.CheckLeaks(t)
	dests := &fakeDestinations{synced: make(chan struct{}), targets: map[netip.AddrPort]discovery.Target{
		*ap("10.96.0.10:80"): {Kind: discovery.ServiceTarget, Service: "web", Port: discovery.ServicePort{Port: 80}},
	}}
	r := newTransparentRig(t, dests, Options{ConnectTimeout: 200 * time.Millisecond})
	if _, err := r.get(ap("10.96.0.10:80")); err == nil {
		t.Fatal("served before the index synced")
	}
	if got := r.kind(t, telemetry.TransparentUnsynced); got != 1 {
		t.Errorf("unsynced counted %v times, want 1", got)
	}
	close(dests.synced)
	if st, err := r.get(ap("10.96.0.10:80")); err != nil || st != 200 {
		t.Fatalf("after the sync: %d, %v", st, err)
	}
}
