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
	return m.request(t, id, "GET", "/")
}

// request sends method to target through id's sidecar's web bind.
func (m *authzMesh) request(t *testing.T, id, method, target string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(testkit.HangCtx(t), method, "http://"+m.clients[id].Bind("web")+target, nil)
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

// HTTP rules (per path and method, per gRPC method) put in force on a
// running sidecar: a caller admitted to a route is refused the paths and
// the gRPC method another caller alone may use, with 403 or
// PERMISSION_DENIED naming the rule, and the app sees nothing of it; a
// path spelled to slip past a rule is refused; tunnels, which have no
// path, follow the route's rule; and taking the rules out again admits
// the caller.
func TestHTTPRouteAuthorizationThroughMesh(t *testing.T) {
	m := newAuthzMesh(t)
	both := []string{frontendID, intruderID}
	spec := authz.Spec{
		Routes: map[string][]string{"web": both, "grpc": both, "tcp": both},
		HTTPRoutes: map[string][]authz.HTTPRoute{
			"web":  {{Name: "admin", PathPrefix: "/admin", Methods: []string{"GET", "POST"}, Allow: []string{frontendID}}},
			"grpc": {{Name: "echo", Path: echo.MethodEcho, Allow: []string{frontendID}}},
		},
	}
	withRules, err := authz.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.server.SetAuthorization(withRules); err != nil {
		t.Fatal(err)
	}

	type step struct {
		id, method, target string
		want               int
		wantMsg            string // in the refusal
	}
	for _, s := range []step{
		{frontendID, "GET", "/admin/users", http.StatusOK, ""},
		{intruderID, "GET", "/", http.StatusOK, ""},
		{intruderID, "GET", "/administrator", http.StatusOK, ""},
		{intruderID, "PUT", "/admin/users", http.StatusOK, ""},
		{intruderID, "GET", "/admin/users", http.StatusForbidden, intruderID + ` is not authorized for route "web", HTTP rule "admin" (not_allowed)`},
		{intruderID, "POST", "/admin", http.StatusForbidden, `HTTP rule "admin" (not_allowed)`},
		{intruderID, "GET", "/x/../admin/users", http.StatusForbidden, `route "web" (path_not_canonical)`},
		{intruderID, "GET", "/admin;x/users", http.StatusForbidden, `(path_not_canonical)`},
		{intruderID, "GET", "/admin%2Fusers", http.StatusForbidden, `(path_not_canonical)`},
	} {
		hits := m.web.Hits.Load()
		code, msg := m.request(t, s.id, s.method, s.target)
		if code != s.want || !strings.Contains(msg, s.wantMsg) {
			t.Errorf("%s %s as %s: %d (%s); want %d with %q", s.method, s.target, s.id, code, msg, s.want, s.wantMsg)
		}
		if refused, seen := s.want == http.StatusForbidden, m.web.Hits.Load() != hits; refused == seen {
			t.Errorf("%s %s as %s: the app saw it: %v, refused: %v", s.method, s.target, s.id, seen, refused)
		}
	}

	if err := m.call(t, frontendID); err != nil {
		t.Errorf("gRPC Echo as the caller its rule lists: %v", err)
	}
	grpcHits := m.grpcApp.Hits.Load()
	err = m.call(t, intruderID)
	if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || !strings.Contains(s.Message(), `HTTP rule "echo" (not_allowed)`) {
		t.Errorf("gRPC Echo as a caller its rule does not list: %v; want PERMISSION_DENIED naming the rule", err)
	}
	if m.grpcApp.Hits.Load() != grpcHits {
		t.Error("the gRPC app saw a refused call")
	}
	c, err := m.dialTCP(t, intruderID)
	if err == nil {
		err = echoOnce(t, c, "tunnel")
	}
	if err != nil {
		t.Errorf("a tunnel of a caller the route's rule admits: %v", err)
	}
	waitMetric(t, m.server.Metrics, decisionSeries("web", "http", "deny", authz.ReasonPathNotCanonical), 3)
	waitMetric(t, m.server.Metrics, decisionSeries("web", "http", "deny", authz.ReasonNotAllowed), 2)
	waitMetric(t, m.server.Metrics, decisionSeries("grpc", "grpc", "deny", authz.ReasonNotAllowed), 1)

	spec.HTTPRoutes = nil
	without, err := authz.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.server.SetAuthorization(without); err != nil {
		t.Fatal(err)
	}
	if code, msg := m.request(t, intruderID, "GET", "/admin/users"); code != http.StatusOK {
		t.Errorf("GET /admin/users as %s once the rules are gone: %d (%s)", intruderID, code, msg)
	}
	if err := m.call(t, intruderID); err != nil {
		t.Errorf("gRPC Echo as %s once the rules are gone: %v", intruderID, err)
	}
}
