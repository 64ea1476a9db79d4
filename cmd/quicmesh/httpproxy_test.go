package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// proxyMesh is a client sidecar with an HTTP proxy listener and a server
// sidecar serving an HTTP echo app as "echo", each with its own metrics.
type proxyMesh struct {
	proxyURL             *url.URL
	clientReg, serverReg *prometheus.Registry
	clientID             string
}

func newProxyMesh(t *testing.T) *proxyMesh {
	t.Helper()
	const clientID, serverID = "spiffe://test.local/ns/t/sa/client", "spiffe://test.local/ns/t/sa/echo"
	mesh := meshtest.New(t)
	provider := func(id string) identity.Provider {
		p, err := identity.NewCAProvider(mesh.CA, identity.MustParseID(id), identity.CAProviderOptions{Lifetime: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	app := mesh.HTTPApp("echo", meshtest.H1, nil)
	server := mesh.Start("server", meshtest.Spec{ID: serverID, Identity: provider(serverID), Routes: map[string]string{"echo": app.URL("")}})
	client := mesh.Start("client", meshtest.Spec{ID: clientID, Identity: provider(clientID), HTTPProxy: true})
	return &proxyMesh{proxyURL: client.ProxyURL(), clientReg: client.Metrics, serverReg: server.Metrics, clientID: clientID}
}

// The HTTP proxy listener routes by URL host, as docs/operations.md says;
// an unknown host is one clear sentence.
func TestHTTPProxyRoutesByHost(t *testing.T) {
	m := newProxyMesh(t)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(m.proxyURL)}, Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	get := func(u string) (*http.Response, string) {
		t.Helper()
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}
	for _, u := range []string{"http://echo/", "http://echo:8080/x"} {
		if resp, body := get(u); resp.StatusCode != 200 || body != "ok\n" {
			t.Errorf("GET %s: %d %q, want 200 ok", u, resp.StatusCode, body)
		}
	}
	resp, _ := get("http://echo.default.svc.cluster.local/")
	want := `outbound ` + m.clientID + `: no service "echo.default.svc.cluster.local" in discovery (the HTTP proxy takes the service name from the request's host)`
	if got := resp.Header.Get("Quicmesh-Proxy-Error"); resp.StatusCode != 503 || got != want {
		t.Errorf("unknown host: %d, Quicmesh-Proxy-Error %q\nwant 503, %q", resp.StatusCode, got, want)
	}
}

// A CONNECT tunnel carries the same service label on both sidecars: the
// outbound side counts a tunnel; the inbound side, whose route is HTTP,
// serves the request inside through its own HTTP stack (docs/security.md)
// and counts that request under the same name.
func TestConnectTunnelLabelledAlikeOnBothSides(t *testing.T) {
	m := newProxyMesh(t)
	conn, err := net.DialTimeout("tcp", m.proxyURL.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, "CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
	rest, err := io.ReadAll(br)
	if err != nil || !strings.HasSuffix(string(rest), "\r\n\r\nok\n") {
		t.Fatalf("through the tunnel: %q, %v", rest, err)
	}
	conn.Close()

	// Each side counts the close when its half of the tunnel has ended.
	labels := func(reg *prometheus.Registry, metric string) []string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var services []string
			for _, mf := range mfs {
				if mf.GetName() != metric {
					continue
				}
				for _, metric := range mf.GetMetric() {
					for _, l := range metric.GetLabel() {
						if l.GetName() == "service" {
							services = append(services, l.GetValue())
						}
					}
				}
			}
			if len(services) > 0 || time.Now().After(deadline) {
				return services
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	out, in := labels(m.clientReg, "quicmesh_tcp_close_total"), labels(m.serverReg, "quicmesh_response_total")
	if len(out) != 1 || len(in) != 1 || out[0] != in[0] || out[0] != "echo:80" {
		t.Fatalf("outbound tunnel close labelled service=%v, inbound response %v; want echo:80 on both", out, in)
	}
}
