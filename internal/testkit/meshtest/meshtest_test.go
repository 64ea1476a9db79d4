package meshtest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// endpoints is what the mesh's resolver answers for service now.
func endpoints(t *testing.T, m *Mesh, service string) []discovery.Endpoint {
	t.Helper()
	w, err := m.res.Resolve(testkit.HangCtx(t), service)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", service, err)
	}
	defer w.Close()
	u, err := w.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u.Endpoints
}

// Serving sidecars are advertised under their identity (or the one the
// test has discovery claim), in the order of their names; Resolve wins
// over them; a restart in place keeps one entry.
func TestResolverFollowsTheSidecars(t *testing.T) {
	m := New(t)
	web := m.HTTPApp("web", H1, nil)
	b := m.Start("b", Spec{ID: "spiffe://test.local/b", Routes: map[string]string{"web": web.URL("http")}})
	a := m.Start("a", Spec{ID: "spiffe://test.local/a", AdvertiseID: "spiffe://test.local/claimed", Routes: map[string]string{"web": web.URL("http"), "api": web.URL("http")}})
	got := endpoints(t, m, "web")
	if len(got) != 2 || got[0].Addr != a.InboundAddr().String() || got[0].Identity != "spiffe://test.local/claimed" ||
		got[1].Addr != b.InboundAddr().String() || got[1].Identity != "spiffe://test.local/b" {
		t.Fatalf("web: %+v", got)
	}
	if got := endpoints(t, m, "api"); len(got) != 1 || got[0].Addr != a.InboundAddr().String() {
		t.Fatalf("api: %+v", got)
	}

	addr := b.InboundAddr().String()
	b.Close()
	m.Start("b", Spec{ID: "spiffe://test.local/b", Addr: addr, Routes: map[string]string{"web": web.URL("http")}})
	if got := endpoints(t, m, "web"); len(got) != 2 || got[1].Addr != addr {
		t.Fatalf("web after restarting b: %+v", got)
	}

	m.Resolve("web", a.Endpoint())
	m.Resolve("empty")
	if got := endpoints(t, m, "web"); len(got) != 1 || got[0].Identity != "spiffe://test.local/a" {
		t.Fatalf("web after Resolve: %+v", got)
	}
	if got := endpoints(t, m, "empty"); len(got) != 0 {
		t.Fatalf("empty: %+v", got)
	}
}

// Binds are found by name, a service's name by default.
func TestBindsByName(t *testing.T) {
	m := New(t)
	c := m.Start("client", Spec{ID: "spiffe://test.local/c", HTTPProxy: true,
		Binds: []Bind{{Service: "web"}, {Name: "web raw", Service: "web", Opaque: true}}})
	proxy := c.HTTPProxyAddr().String()
	if c.Bind("web") == c.Bind("web raw") || c.Bind("web") == proxy || c.Bind("web raw") == proxy {
		t.Fatalf("binds %v, HTTP proxy %s: want three listeners", c.binds, proxy)
	}
	if c.ProxyURL().Host != c.HTTPProxyAddr().String() {
		t.Fatalf("proxy URL %v", c.ProxyURL())
	}
	// The HTTP listeners answer: "web" has no endpoints. (Also: a
	// sidecar closed before its listeners' Serve goroutines registered
	// their HTTP servers leaks those servers, a race in proxy/outbound
	// this test would otherwise hit.)
	hc := testkit.H1Client(t)
	proxied := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(c.ProxyURL())}, Timeout: time.Until(testkit.HangGuard(t))}
	defer proxied.CloseIdleConnections()
	for _, get := range []func() (*http.Response, error){
		func() (*http.Response, error) { return hc.Get("http://" + c.Bind("web") + "/") },
		func() (*http.Response, error) { return proxied.Get("http://web/") },
	} {
		resp, err := get()
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503 for a service without endpoints", resp.StatusCode)
		}
	}
}
