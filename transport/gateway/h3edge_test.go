package gateway_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/internal/httpx"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/transport/fallback"
	"github.com/quicmesh/quicmesh/transport/gateway"
)

// identityApp answers with the identity the sidecar asserted and any
// other Quicmesh-* field that reached it.
func identityApp() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var other []string
		for k := range r.Header {
			if httpx.IsMeshHeader(k) && k != httpx.HeaderPeerIdentity {
				other = append(other, k)
			}
		}
		fmt.Fprintf(w, "identity=%s other=%s", strings.Join(r.Header.Values(httpx.HeaderPeerIdentity), ","), strings.Join(other, ","))
	})
}

// h3West is west's sidecar with inbound.h3 on behind a gateway that
// exports "web"; only eastID may call web.
type h3West struct {
	m   *meshtest.Mesh
	app *meshtest.App
	gw  string
}

func newH3West(t *testing.T, westIdentity identity.Provider) *h3West {
	t.Helper()
	m := meshtest.NewOver(t, fallback.QUIC)
	app := m.HTTPApp("web", meshtest.H1, identityApp())
	pol, err := authz.Parse(authz.Spec{Routes: map[string][]string{"web": {eastID}}})
	if err != nil {
		t.Fatal(err)
	}
	w := m.Start("west", meshtest.Spec{ID: westID, Identity: westIdentity, InboundH3: true,
		Routes: map[string]string{"web": app.URL("http")}, Authorization: pol})
	res := static.NewFromMap(map[string][]discovery.Endpoint{"web": {w.Endpoint()}})
	t.Cleanup(func() { res.Close() })
	gw, _ := startGateway(t, export(t, res, "web"))
	return &h3West{m: m, app: app, gw: gw}
}

// A plain HTTP/3 client (quic-go's http3) in east reaches west's app
// through the gateway by the service's server name: the gateway relays
// the connection by SNI like a sidecar's, so the client verifies west's
// SPIFFE ID itself, west's sidecar verifies the client's certificate and
// policy, and the app sees the client's identity.
func TestPlainHTTP3ThroughTheGateway(t *testing.T) {
	w := newH3West(t, nil)
	sni, err := gateway.ServiceName("web")
	if err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, caller string, want identity.ID) (*http.Response, string, error) {
		req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "https://"+w.gw+"/", nil)
		req.Host = "web"
		req.Header.Set(httpx.HeaderPeerIdentity, impostorID) // forged: must not reach the app
		resp, err := meshtest.H3Client(t, meshtest.H3TLS(identitytest.Provider(t, w.m.CA, caller), want, sni)).Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, string(body), err
	}
	t.Run("allowed", func(t *testing.T) {
		resp, body, err := get(t, eastID, identity.MustParseID(westID))
		if err != nil {
			t.Fatal(err)
		}
		if want := "identity=" + eastID + " other="; resp.StatusCode != 200 || body != want {
			t.Fatalf("status %d, app said %q; want 200 and %q", resp.StatusCode, body, want)
		}
	})
	t.Run("denied", func(t *testing.T) {
		hits := w.app.Hits.Load()
		resp, _, err := get(t, impostorID, identity.MustParseID(westID))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusForbidden || w.app.Hits.Load() != hits {
			t.Fatalf("status %d, app hits %d → %d; want 403 and none", resp.StatusCode, hits, w.app.Hits.Load())
		}
	})
	t.Run("client holds the destination to its identity", func(t *testing.T) {
		hits := w.app.Hits.Load()
		_, _, err := get(t, eastID, identity.MustParseID(impostorID))
		if err == nil || w.app.Hits.Load() != hits {
			t.Fatalf("error %v, app hits %d → %d; want the server refused and no request", err, hits, w.app.Hits.Load())
		}
	})
}

// Caddy 2.11's reverse_proxy, an HTTP/3 client the project did not
// write, calls west's app through the gateway with a mesh client
// certificate, verifying west's certificate against the trust bundle and
// the server name it dials; an identity the policy does not allow gets
// 403, and a Quicmesh-Peer-Identity the caller forges does not reach the
// app. A standard client authenticates the server by DNS name, so west's
// certificate carries the gateway name it is dialled by next to its
// SPIFFE ID (the built-in CA's LeafOptions.DNSNames, `quicmesh ca issue
// --dns`; a SPIRE registration entry's -dns gives the same;
// docs/design.md, "Standard HTTP/3 at the edge").
func TestCaddyHTTP3ThroughTheGateway(t *testing.T) {
	caddy := caddyBinary(t)
	sni, err := gateway.ServiceName("web")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root, err := identity.NewCA("test.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	west, err := root.IssueWith(identity.MustParseID(westID), time.Hour, identity.LeafOptions{DNSNames: []string{sni}})
	if err != nil {
		t.Fatal(err)
	}
	w := newH3West(t, identity.NewStaticProvider(west, root.Pool()))
	rootPEM := filepath.Join(dir, "root.pem")
	writeFile(t, rootPEM, root.BundlePEM())
	sites := ""
	ports := map[string]string{}
	for _, caller := range []string{eastID, impostorID} {
		name := caller[strings.LastIndex(caller, "/")+1:]
		certPEM, keyPEM, err := root.IssuePEM(identity.MustParseID(caller), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		writeFile(t, cert, certPEM)
		writeFile(t, key, keyPEM)
		ports[caller] = freePort(t)
		sites += fmt.Sprintf(`
http://127.0.0.1:%s {
	reverse_proxy %s {
		header_up Host web
		transport http {
			versions 3
			tls_client_auth %s %s
			tls_trust_pool file %s
			tls_server_name %s
		}
	}
}
`, ports[caller], w.gw, cert, key, rootPEM, sni)
	}
	caddyfile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n"+sites), 0o600); err != nil {
		t.Fatal(err)
	}
	runCaddy(t, caddy, dir, caddyfile, ports[eastID], ports[impostorID])

	get := func(port string) (int, string) {
		req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "http://127.0.0.1:"+port+"/", nil)
		req.Header.Set(httpx.HeaderPeerIdentity, impostorID) // forged: must not reach the app
		resp, err := testkit.H1Client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, body := get(ports[eastID]); status != 200 || body != "identity="+eastID+" other=" {
		t.Fatalf("through Caddy as east: status %d, app said %q; want 200 and east's identity only", status, body)
	}
	hits := w.app.Hits.Load()
	if status, _ := get(ports[impostorID]); status != http.StatusForbidden || w.app.Hits.Load() != hits {
		t.Fatalf("through Caddy as a denied identity: status %d, app hits %d → %d; want 403 and none", status, hits, w.app.Hits.Load())
	}
}

// caddyBinary is Caddy's path: in $QUICMESH_CADDY_BIN, or what
// .ci/caddy.sh prints (it builds Caddy into the per-machine cache once,
// minutes; a no-op afterwards). Never skipped: make unit sets the
// variable.
func caddyBinary(t *testing.T) string {
	dir := os.Getenv("QUICMESH_CADDY_BIN")
	if dir == "" {
		_, self, _, _ := runtime.Caller(0)
		t.Log("QUICMESH_CADDY_BIN unset: running .ci/caddy.sh (builds Caddy once per machine, minutes)")
		out, err := exec.Command("bash", filepath.Join(filepath.Dir(self), "..", "..", ".ci", "caddy.sh")).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf(".ci/caddy.sh: %v\n%s", err, stderr)
		}
		dir = strings.TrimSpace(string(out))
	}
	bin := filepath.Join(dir, "caddy")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Caddy missing (run .ci/caddy.sh): %v", err)
	}
	return bin
}

// runCaddy starts Caddy on caddyfile with its state under dir, and waits
// until it listens on every port, or fails the test with its log if it
// exits first. It is stopped when the test ends.
func runCaddy(t *testing.T, bin, dir, caddyfile string, ports ...string) {
	t.Helper()
	var log bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy's log:\n%s", log.String())
		}
	})
	for _, port := range ports {
		for {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("caddy exited before listening on %s: %v", port, err)
			case <-testkit.HangCtx(t).Done():
				t.Fatalf("caddy never listened on %s", port)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// freePort is a TCP port on loopback that was free a moment ago, for a
// server that cannot be handed a listener.
func freePort(t *testing.T) string {
	ln := testkit.Listen(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	return port
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
