package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// A `quicmesh proxy` started with --config serves a route whose
// inbound.authorization admits one of two client sidecars; editing the
// file swaps who is admitted without a restart, and a broken edit keeps
// the policy in force (and says so in the log).
func TestProxyAuthorizationReload(t *testing.T) {
	const serverID = "spiffe://test.local/ns/t/sa/echo"
	const aliceID, bobID = "spiffe://test.local/ns/t/sa/alice", "spiffe://test.local/ns/t/sa/bob"
	mesh := meshtest.New(t)
	app := mesh.HTTPApp("echo", meshtest.H1, nil)

	dir := t.TempDir()
	certPEM, keyPEM, err := mesh.CA.IssuePEM(identity.MustParseID(serverID), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"echo.crt": certPEM, "echo.key": keyPEM, "bundle.crt": mesh.CA.BundlePEM()}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "quicmesh.json")
	writeConfig := func(authorization string) {
		t.Helper()
		cfg := fmt.Sprintf(`{"identity": {"cert": %q, "key": %q, "bundle": %q}, "inbound": {"routes": {"echo": %q}, "authorization": %s}}`,
			filepath.Join(dir, "echo.crt"), filepath.Join(dir, "echo.key"), filepath.Join(dir, "bundle.crt"), app.URL("http"), authorization)
		tmp := cfgPath + ".tmp"
		if err := os.WriteFile(tmp, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfgPath); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(`{"routes": {"echo": [` + fmt.Sprintf("%q", aliceID) + `]}}`)

	server := startProxyRun(t, "server", "--config", cfgPath, "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "")
	ready := server.waitLog(t, "ready")
	t.Cleanup(func() { server.stop(t, ready.Admin) })
	mesh.Resolve("echo", discovery.Endpoint{Addr: ready.Inbound, Identity: serverID})
	binds := map[string]string{}
	for _, id := range []string{aliceID, bobID} {
		binds[id] = mesh.Start(id, meshtest.Spec{ID: id, ClientsSpeakFirst: true, Binds: []meshtest.Bind{{Service: "echo"}}}).Bind("echo")
	}
	c := testkit.H1Client(t)
	status := func(id string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "http://"+binds[id]+"/", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET as %s: %v", id, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	expect := func(when string, alice, bob int) {
		t.Helper()
		if a, b := status(aliceID), status(bobID); a != alice || b != bob {
			t.Fatalf("%s: alice got %d, bob %d; want %d, %d\n%s", when, a, b, alice, bob, server.logs.String())
		}
	}
	expect("as started", http.StatusOK, http.StatusForbidden)

	writeConfig(`{"routes": {"echo": [` + fmt.Sprintf("%q", bobID) + `]}}`)
	server.waitLog(t, "authorization policy reloaded")
	expect("after the edit", http.StatusForbidden, http.StatusOK)

	writeConfig(`{"routes": {"echo": ["spiffe://test.local"]}}`)
	server.waitLog(t, "config reload failed: keeping the authorization policy in force")
	expect("after a broken edit", http.StatusForbidden, http.StatusOK)
}
