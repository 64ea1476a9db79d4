package sidecar_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
	"github.com/quicmesh/quicmesh/proxy/authz"
)

const (
	frontendID = "spiffe://test.local/ns/default/sa/frontend"
	intruderID = "spiffe://test.local/ns/default/sa/intruder"
)

// authzMesh is a server sidecar with an HTTP/1.1, a gRPC and a TCP echo
// app, and two client sidecars with different identities, each with a
// bind per app.
type authzMesh struct {
	*meshtest.Mesh
	server               *meshtest.Sidecar
	clients              map[string]*meshtest.Sidecar // by SPIFFE ID
	web, grpcApp, tcpApp *meshtest.App
	httpClient           *http.Client
}

// allowOnly is a policy that lets only id call the three routes.
func allowOnly(t *testing.T, id string) *authz.Policy {
	t.Helper()
	p, err := authz.Parse(authz.Spec{Routes: map[string][]string{"web": {id}, "grpc": {id}, "tcp": {id}}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newAuthzMesh(t *testing.T) *authzMesh {
	t.Helper()
	m := &authzMesh{Mesh: meshtest.New(t), clients: map[string]*meshtest.Sidecar{}}
	m.web = m.HTTPApp("web", meshtest.H1, nil)
	m.grpcApp = m.GRPCApp("grpc")
	m.tcpApp = m.TCPApp("tcp", nil)
	m.server = m.Start("server", meshtest.Spec{
		ID:            echoID,
		Routes:        map[string]string{"web": m.web.URL("http"), "grpc": m.grpcApp.URL(""), "tcp": m.tcpApp.URL("tcp")},
		Authorization: allowOnly(t, frontendID),
	})
	for _, id := range []string{frontendID, intruderID} {
		m.clients[id] = m.Start(id, meshtest.Spec{ID: id, ClientsSpeakFirst: true, Binds: []meshtest.Bind{
			{Service: "web"}, {Service: "grpc"}, {Service: "tcp", Opaque: true},
		}})
	}
	m.httpClient = testkit.H1Client(t)
	return m
}

// get sends GET through id's sidecar; it returns the status and the
// proxy's error header.
func (m *authzMesh) get(t *testing.T, id string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(testkit.HangCtx(t), "GET", "http://"+m.clients[id].Bind("web")+"/", nil)
	resp, err := m.httpClient.Do(req)
	if err != nil {
		t.Fatalf("GET as %s: %v", id, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error")
}

// call makes a unary gRPC call through id's sidecar.
func (m *authzMesh) call(t *testing.T, id string) error {
	t.Helper()
	cc := testkit.GRPCConn(t, m.clients[id].Bind("grpc"))
	got, err := echo.EchoUnary(testkit.HangCtx(t), cc, []byte("hello"))
	if err == nil && string(got) != "hello" {
		return fmt.Errorf("echoed %q", got)
	}
	return err
}

// dialTCP opens a TCP connection through id's sidecar. With an opaque
// bind the sidecar opens the tunnel as soon as it accepts, so a refused
// tunnel's reset can reach the client before its connect returns: that
// is a refusal too.
func (m *authzMesh) dialTCP(t *testing.T, id string) (*net.TCPConn, error) {
	t.Helper()
	c, err := net.Dial("tcp", m.clients[id].Bind("tcp"))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// echoOnce writes msg on c and reads it back.
func echoOnce(t *testing.T, c *net.TCPConn, msg string) error {
	t.Helper()
	c.SetDeadline(testkit.HangGuard(t))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

func decisionSeries(route, proto, decision, reason string) string {
	return fmt.Sprintf(`quicmesh_authz_decisions_total{decision=%q,proto=%q,reason=%q,route=%q}`, decision, proto, reason, route)
}

// expect checks that id is allowed (or refused) on all three protocols:
// a refused HTTP request gets 403 naming the caller and route, a refused
// gRPC call PERMISSION_DENIED, a refused tunnel a reset before a byte,
// and the apps see nothing of a refused caller. wantDenied counts the
// server's deny decisions so far, per route.
func (m *authzMesh) expect(t *testing.T, id string, allowed bool, wantDenied float64) {
	t.Helper()
	webHits, grpcHits, tcpHits := m.web.Hits.Load(), m.grpcApp.Hits.Load(), m.tcpApp.Hits.Load()

	code, proxyErr := m.get(t, id)
	err := m.call(t, id)
	c, tcpErr := m.dialTCP(t, id)
	if tcpErr == nil {
		tcpErr = echoOnce(t, c, "ping")
	}

	if allowed {
		if code != http.StatusOK || err != nil || tcpErr != nil {
			t.Fatalf("%s, allowed: HTTP %d (%s), gRPC %v, TCP %v", id, code, proxyErr, err, tcpErr)
		}
		if m.web.Hits.Load() != webHits+1 || m.grpcApp.Hits.Load() != grpcHits+1 || m.tcpApp.Hits.Load() != tcpHits+1 {
			t.Fatalf("%s, allowed: the apps saw %d requests, %d calls, %d connections; want 1 each", id,
				m.web.Hits.Load()-webHits, m.grpcApp.Hits.Load()-grpcHits, m.tcpApp.Hits.Load()-tcpHits)
		}
		return
	}
	wantMsg := id + ` is not authorized for route "web" (not_allowed)`
	if code != http.StatusForbidden || !strings.Contains(proxyErr, wantMsg) {
		t.Errorf("%s, refused: HTTP %d, Quicmesh-Proxy-Error %q; want 403 with %q", id, code, proxyErr, wantMsg)
	}
	if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || !strings.Contains(s.Message(), `route "grpc"`) {
		t.Errorf("%s, refused: gRPC %v; want PERMISSION_DENIED naming the route", id, err)
	}
	if tcpErr == nil {
		t.Errorf("%s, refused: the tunnel echoed", id)
	}
	// The decisions are counted before the refusal is sent, so the
	// client having seen it is enough to read them.
	for _, rp := range [][2]string{{"web", "http"}, {"grpc", "grpc"}, {"tcp", "tcp"}} {
		waitMetric(t, m.server.Metrics, decisionSeries(rp[0], rp[1], "deny", authz.ReasonNotAllowed), wantDenied)
	}
	// The tunnel was refused before the app was dialled: its accept
	// counter did not move (and the HTTP and gRPC apps saw nothing).
	if m.web.Hits.Load() != webHits || m.grpcApp.Hits.Load() != grpcHits || m.tcpApp.Hits.Load() != tcpHits {
		t.Fatalf("%s, refused: the apps saw %d requests, %d calls, %d connections; want none", id,
			m.web.Hits.Load()-webHits, m.grpcApp.Hits.Load()-grpcHits, m.tcpApp.Hits.Load()-tcpHits)
	}
}

// Allowed and refused callers over HTTP/1.1, gRPC and TCP, through real
// sidecars and mTLS QUIC; then a new policy is put in force while
// everything runs: new requests and tunnels follow it at once, a tunnel
// opened before the change stays up, and a policy naming an unknown
// route is refused with the one in force kept.
func TestAuthorizationThroughMesh(t *testing.T) {
	m := newAuthzMesh(t)
	m.expect(t, frontendID, true, 0)
	m.expect(t, intruderID, false, 1)

	open, err := m.dialTCP(t, frontendID)
	if err == nil {
		err = echoOnce(t, open, "before")
	}
	if err != nil {
		t.Fatalf("a tunnel before the change: %v", err)
	}

	if err := m.server.SetAuthorization(allowOnly(t, intruderID)); err != nil {
		t.Fatal(err)
	}
	m.expect(t, intruderID, true, 1)
	m.expect(t, frontendID, false, 2)
	if err := echoOnce(t, open, "after"); err != nil {
		t.Errorf("a tunnel opened before the change was cut: %v", err)
	}

	typo, err := authz.Parse(authz.Spec{Default: authz.Unauthenticated, Routes: map[string][]string{"wbe": {authz.Deny}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.server.SetAuthorization(typo); err == nil {
		t.Fatal("a policy for an unknown route was put in force")
	}
	m.expect(t, frontendID, false, 3)
}
