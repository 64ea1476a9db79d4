package dns

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/transport"
)

const idImpostor = "spiffe://test.local/ns/default/sa/impostor"

// backend is an HTTP app that answers with its name, behind its own
// sidecar serving the service "echo".
type backend struct {
	name    string
	served  *atomic.Int64
	sidecar *meshtest.Sidecar
}

func startBackend(m *meshtest.Mesh, name, id string) *backend {
	app := m.HTTPApp(name, meshtest.H1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, name)
	}))
	s := m.Start("sidecar of "+name, meshtest.Spec{ID: id, Routes: map[string]string{"echo": app.URL("")}})
	return &backend{name: name, served: &app.Hits, sidecar: s}
}

// records publishes b under target (a name in mesh.test) for service echo
// with an SRV weight, declaring id in a TXT record at the target.
func (b *backend) records(target string, weight int, id string) string {
	port := b.sidecar.InboundAddr().Port
	return fmt.Sprintf(`_quicmesh._udp.echo.mesh.test. IN SRV 0 %d %d %s.mesh.test.
		%[3]s.mesh.test. IN A 127.0.0.1
		%[3]s.mesh.test. IN TXT "spiffe=%[4]s"
		`, weight, port, target, id)
}

// dnsClient is a client sidecar whose discovery is r, with a bind for
// "echo"; get sends one request on a new connection (so that each request
// is balanced anew) and returns the backend's name.
type dnsClient struct {
	sidecar *meshtest.Sidecar
	http    *http.Client
}

func startDNSClient(t *testing.T, m *meshtest.Mesh, r *Resolver) *dnsClient {
	t.Helper()
	s := m.Start("client", meshtest.Spec{
		ID:       "spiffe://test.local/ns/default/sa/client",
		Resolver: r,
		Binds:    []meshtest.Bind{{Service: "echo"}},
		Limits:   transport.Limits{HandshakeTimeout: 2 * time.Second},
	})
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &dnsClient{sidecar: s, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *dnsClient) get() (string, error) {
	resp, err := c.http.Get("http://" + c.sidecar.Bind("echo") + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return string(body), nil
}

// Real traffic through sidecars whose discovery is a real DNS server:
// an added SRV record gets traffic within its TTL, and a DNS outage keeps
// the last answer while traffic continues.
func TestSidecarsThroughNSD(t *testing.T) {
	const ttl = time.Second // the zone's TTLs
	m := meshtest.New(t)
	a := startBackend(m, "a", idEcho)
	b := startBackend(m, "b", idEcho)
	ns := startNSD(t, a.records("a", 1, idEcho))
	logs := &testkit.LogBuffer{}
	r, err := New(Options{Zone: "mesh.test", Nameservers: []string{ns.addr}, MinTTL: ttl / 2, MaxTTL: ttl, Timeout: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	events := refreshEvents(r)
	t.Cleanup(func() { r.Close() })
	c := startDNSClient(t, m, r)

	for i := range 10 {
		if got, err := c.get(); err != nil || got != "a" {
			t.Fatalf("request %d: %q %v, want a", i, got, err)
		}
	}

	// Add b with ten times a's weight: the balancer prefers it as soon as
	// discovery offers it.
	ns.setZone(t, a.records("a", 1, idEcho)+b.records("b", 10, idEcho))
	added := time.Now()
	for {
		got, err := c.get()
		if err != nil {
			t.Fatalf("request after adding b: %v", err)
		}
		if got == "b" {
			break
		}
		// TTL plus slack for a machine under load; without re-resolving on
		// TTL, b would never be found.
		if d := time.Since(added); d > ttl+5*time.Second {
			t.Fatalf("no traffic to the added endpoint %v after the record was served (TTL %v)", d, ttl)
		}
	}
	t.Logf("traffic reached the added endpoint %v after the zone reload (TTL %v)", time.Since(added).Round(time.Millisecond), ttl)

	// Outage: the server is gone; once refreshes have failed, traffic
	// still flows to the last answer's endpoints.
	ns.stop()
	for failed := 0; failed < 2; {
		if waitRefresh(t, events) != nil {
			failed++
		}
	}
	if n := testutil.ToFloat64(r.stale); n != 1 {
		t.Errorf("stale watches = %v during the outage, want 1", n)
	}
	seen := map[string]int{}
	for i := range 40 {
		got, err := c.get()
		if err != nil {
			t.Fatalf("request %d during the DNS outage: %v", i, err)
		}
		seen[got]++
	}
	if seen["a"]+seen["b"] != 40 {
		t.Fatalf("answers during the outage: %v", seen)
	}
	for failed := 0; failed < 2; {
		if waitRefresh(t, events) != nil {
			failed++
		}
	}
	// One line per distinct failure, not one per failed refresh (four
	// or more here): the outage's refused queries are one failure. A
	// query that NSD's exiting server children took and never answered
	// times out first, a failure of its own kind (two lines once, in a
	// -race run at load ~35); at most one such line, before the refusals.
	var refused, timedOut, other int
	for _, l := range logs.Lines("dns discovery: refresh failed; keeping the last endpoint set") {
		switch {
		case strings.Contains(l, "connection refused"):
			refused++
		case strings.Contains(l, "i/o timeout") && refused == 0:
			timedOut++
		default:
			other++
		}
	}
	if refused != 1 || timedOut > 1 || other > 0 {
		t.Errorf("failure log lines for one outage: %d refused, %d timed out before, %d other; want 1, at most 1, 0:\n%s", refused, timedOut, other, logs)
	}
}

// A record whose TXT declares an identity the peer cannot prove is
// refused in the handshake: nothing reaches the impostor's app.
func TestIdentityMismatchRefusedAtHandshake(t *testing.T) {
	m := meshtest.New(t)
	impostor := startBackend(m, "impostor-app", idImpostor)
	ns := startNSD(t, impostor.records("x", 1, idEcho)) // DNS says: expect echo
	r, err := New(Options{Zone: "mesh.test", Nameservers: []string{ns.addr}, Timeout: 500 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	events := refreshEvents(r)
	t.Cleanup(func() { r.Close() })
	c := startDNSClient(t, m, r)
	for i := range 3 {
		got, err := c.get()
		if err == nil {
			t.Fatalf("request %d answered %q by a peer that is not %s", i, got, idEcho)
		}
		if !strings.Contains(err.Error(), "wrong_id") {
			t.Fatalf("request %d failed for another reason than the identity check: %v", i, err)
		}
	}
	if n := impostor.served.Load(); n != 0 {
		t.Fatalf("the impostor's app served %d requests; want none", n)
	}
	if n := c.sidecar.Pool().Len(); n != 0 {
		t.Fatalf("%d refused peer connections are pooled", n)
	}

	// The same peer declared with the ID it holds is served: the refusal
	// was the identity check, not anything else.
	ns.setZone(t, impostor.records("x", 1, idImpostor))
	for range 2 { // the second refresh started after the reload
		if err := waitRefresh(t, events); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := c.get()
		if err == nil && got == "impostor-app" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the correctly declared peer is not served: %q %v", got, err)
		}
	}
}
