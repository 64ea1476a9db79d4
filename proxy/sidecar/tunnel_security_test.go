package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// The attacks of issue 8 (item 1): an app smuggling HTTP to the far app
// inside a raw tunnel, so that its forged Quicmesh-* and hop-by-hop fields
// reach the far app and the far sidecar's HTTP checks are skipped.

// forgedHeaders is what a hostile client adds to every smuggled request.
const forgedHeaders = "Quicmesh-Peer-Identity: spiffe://test.local/ns/kube-system/sa/admin\r\n" +
	"Quicmesh-Service: raw\r\n" +
	"Quicmesh-Orig-Proto: h2\r\n" +
	"TE: deflate\r\n" +
	"Upgrade: h2c\r\n" +
	"Connection: X-Smuggled, Keep-Alive\r\n" +
	"X-Smuggled: 1\r\n" +
	"Keep-Alive: timeout=5\r\n"

func forgedRequest(path, host string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + forgedHeaders + "\r\n"
}

// recorded is one request as the far app parsed it.
type recorded struct {
	method, path string
	header       http.Header
}

// recordingApp is an HTTP/1.1 and h2c app that records every request.
// /upgrade accepts an Upgrade (101, then echoes bytes), /refuse answers
// an Upgrade with 200, CONNECT is accepted and echoed.
type recordingApp struct {
	mu   sync.Mutex
	reqs []recorded
	addr string
}

func startRecordingApp(m *meshtest.Mesh) *recordingApp {
	a := &recordingApp{}
	a.addr = m.HTTPApp("recording", meshtest.H1H2C, http.HandlerFunc(a.serve)).Addr
	return a
}

func (a *recordingApp) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.reqs = append(a.reqs, recorded{r.Method, r.URL.Path, r.Header.Clone()})
	a.mu.Unlock()
	switch {
	case r.Method == http.MethodConnect:
		a.echoHijacked(w, "HTTP/1.1 200 OK\r\n\r\n")
	case r.URL.Path == "/upgrade" && r.Header.Get("Upgrade") != "":
		a.echoHijacked(w, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+r.Header.Get("Upgrade")+"\r\n\r\n")
	default:
		w.Header().Set("X-Path", r.URL.Path)
		io.WriteString(w, "ok "+r.URL.Path)
	}
}

// echoHijacked answers with head, then echoes until the client's EOF.
func (a *recordingApp) echoHijacked(w http.ResponseWriter, head string) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	brw.WriteString(head)
	brw.Flush()
	io.Copy(conn, brw)
	conn.(*net.TCPConn).CloseWrite()
}

func (a *recordingApp) find(path string) []recorded {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []recorded
	for _, r := range a.reqs {
		if r.path == path {
			out = append(out, r)
		}
	}
	return out
}

// checkClean fails unless the request the app saw at path carries the
// verified identity and nothing forged or hop-by-hop.
func (a *recordingApp) checkClean(t *testing.T, path string) {
	t.Helper()
	got := a.find(path)
	if len(got) != 1 {
		t.Fatalf("app saw %d requests for %s, want 1", len(got), path)
	}
	h := got[0].header
	if v := h.Values("Quicmesh-Peer-Identity"); len(v) != 1 || v[0] != clientID {
		t.Errorf("app saw Quicmesh-Peer-Identity %q, want only the verified %q", v, clientID)
	}
	for k := range h {
		if strings.HasPrefix(k, "Quicmesh-") && k != "Quicmesh-Peer-Identity" {
			t.Errorf("app saw %s: %q", k, h.Values(k))
		}
	}
	for _, k := range []string{"Te", "Upgrade", "Connection", "X-Smuggled", "Keep-Alive"} {
		if v, ok := h[k]; ok {
			t.Errorf("app saw hop-by-hop %s: %q", k, v)
		}
	}
}

// secMesh is a client sidecar and a server sidecar in front of a
// recording app on three kinds of route, plus a raw TCP echo app.
type secMesh struct {
	app        *recordingApp
	server     *meshtest.Sidecar
	binds      map[string]string
	proxyAddr  string
	clientReg  *prometheus.Registry
	serverReg  *prometheus.Registry
	detectWait time.Duration // the client sidecar's detection timeout
	headerWait time.Duration // the server sidecar's header timeout
}

var secServices = []string{"web", "auto", "h2", "raw"}

func newSecMesh(t *testing.T, headerTimeout time.Duration) *secMesh {
	t.Helper()
	mesh := meshtest.New(t)
	m := &secMesh{
		app:        startRecordingApp(mesh),
		binds:      map[string]string{},
		detectWait: 200 * time.Millisecond,
		headerWait: headerTimeout,
	}
	rawApp := mesh.TCPApp("raw", nil)
	appAddr := m.app.addr
	m.server = mesh.Start("server", meshtest.Spec{
		ID: echoID,
		Routes: map[string]string{
			"web":  "http://" + appAddr,
			"auto": appAddr,
			"h2":   "h2c://" + appAddr,
			"raw":  rawApp.URL("tcp"),
		},
		HeaderTimeout: headerTimeout,
	})
	m.serverReg = m.server.Metrics
	var binds []meshtest.Bind
	for _, svc := range secServices {
		binds = append(binds, meshtest.Bind{Service: svc})
	}
	client := mesh.Start("client", meshtest.Spec{ID: clientID, Binds: binds, HTTPProxy: true, DetectTimeout: m.detectWait})
	m.clientReg = client.Metrics
	for _, svc := range secServices {
		m.binds[svc] = client.Bind(svc)
	}
	m.proxyAddr = client.HTTPProxyAddr().String()
	return m
}

// tunnels is how many tunnels the client sidecar has opened for service.
func (m *secMesh) tunnels(t *testing.T, service string) float64 {
	t.Helper()
	var n float64
	for k, v := range scrape(t, m.clientReg) {
		if strings.HasPrefix(k, "quicmesh_tcp_open_total{") && strings.Contains(k, `direction="outbound"`) && strings.Contains(k, `service="`+service+`"`) {
			n += v
		}
	}
	return n
}

// waitTunnels waits until the client sidecar has opened want tunnels for
// service: the event that proves its detection gave up on HTTP.
func (m *secMesh) waitTunnels(t *testing.T, service string, want float64) {
	t.Helper()
	deadline := testkit.HangGuard(t)
	for m.tunnels(t, service) < want {
		if time.Now().After(deadline) {
			t.Fatalf("client sidecar opened %v tunnels for %s, want %v", m.tunnels(t, service), service, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialT(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return c.(*net.TCPConn)
}

// vector opens a connection on service's bind listener, makes the client
// sidecar carry it as an opaque tunnel its own way, and sends payload
// inside.
type vector struct {
	name string
	open func(t *testing.T, m *secMesh, service string, payload string) *net.TCPConn
}

var tunnelVectors = []vector{
	{"slow start", func(t *testing.T, m *secMesh, service, payload string) *net.TCPConn {
		before := m.tunnels(t, service)
		c := dialT(t, m.binds[service])
		io.WriteString(c, payload[:1])
		m.waitTunnels(t, service, before+1)
		io.WriteString(c, payload[1:])
		return c
	}},
	{"silence first", func(t *testing.T, m *secMesh, service, payload string) *net.TCPConn {
		before := m.tunnels(t, service)
		c := dialT(t, m.binds[service])
		m.waitTunnels(t, service, before+1)
		io.WriteString(c, payload)
		return c
	}},
	{"CONNECT to a bind listener", func(t *testing.T, m *secMesh, service, payload string) *net.TCPConn {
		c := dialT(t, m.binds[service])
		fmt.Fprintf(c, "CONNECT %s:80 HTTP/1.1\r\nHost: %s:80\r\n\r\n", service, service)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 || br.Buffered() != 0 {
			t.Fatalf("CONNECT: %v, %v", resp, err)
		}
		io.WriteString(c, payload)
		return c
	}},
}

// TestTunnelVectorsGoThroughInboundHTTP: whatever made the client sidecar
// tunnel, the far app sees only what the inbound HTTP stack lets through.
func TestTunnelVectorsGoThroughInboundHTTP(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	for _, v := range tunnelVectors {
		for _, service := range []string{"web", "auto"} {
			t.Run(v.name+"/"+service, func(t *testing.T) {
				path := "/" + strings.ReplaceAll(v.name, " ", "-") + "/" + service
				c := v.open(t, m, service, forgedRequest(path, service))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("reading response: %v", err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok "+path {
					t.Fatalf("status %d body %q", resp.StatusCode, body)
				}
				m.app.checkClean(t, path)
				if _, ok := m.app.find(path)[0].header["User-Agent"]; ok {
					t.Errorf("app saw a User-Agent the client never sent")
				}
			})

			t.Run(v.name+"/"+service+"/CL+TE refused by the inbound guard", func(t *testing.T) {
				path := "/smuggle/" + strings.ReplaceAll(v.name, " ", "-") + "/" + service
				c := v.open(t, m, service, "POST "+path+" HTTP/1.1\r\nHost: "+service+"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"+forgedRequest(path+"/hidden", service))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("reading response: %v", err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 400 || !strings.Contains(resp.Header.Get("Quicmesh-Proxy-Error"), "Content-Length and Transfer-Encoding") {
					t.Fatalf("status %d, Quicmesh-Proxy-Error %q; want 400 from the inbound guard", resp.StatusCode, resp.Header.Get("Quicmesh-Proxy-Error"))
				}
				// The guard closes the connection: nothing after the bad
				// request may be parsed.
				if rest, err := io.ReadAll(br); len(rest) != 0 || err != nil {
					t.Fatalf("after the 400: %q, %v; want EOF", rest, err)
				}
				if got := len(m.app.find(path)) + len(m.app.find(path+"/hidden")); got != 0 {
					t.Fatalf("%d smuggled requests reached the app", got)
				}
			})
		}
	}
}

// A refused upgrade leaves the connection HTTP: a request pipelined behind
// it is parsed and cleaned by the inbound sidecar, not spliced raw.
func TestRefusedUpgradeThenPipelinedRequest(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	for _, service := range []string{"web", "auto"} {
		t.Run(service, func(t *testing.T) {
			c := dialT(t, m.binds[service])
			refuse, after := "/refuse/"+service, "/after-refused-upgrade/"+service
			io.WriteString(c, "GET "+refuse+" HTTP/1.1\r\nHost: "+service+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Quicmesh-Peer-Identity: spiffe://test.local/ns/kube-system/sa/admin\r\n\r\n"+forgedRequest(after, service))
			br := bufio.NewReader(c)
			for _, path := range []string{refuse, after} {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("response for %s: %v", path, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok "+path {
					t.Fatalf("%s: status %d body %q", path, resp.StatusCode, body)
				}
			}
			// The upgrade request itself reached the app with the real
			// identity (it used to arrive without one).
			up := m.app.find(refuse)
			if len(up) != 1 || up[0].header.Get("Quicmesh-Peer-Identity") != clientID || up[0].header.Get("Upgrade") != "websocket" {
				t.Fatalf("app saw the upgrade request as %+v", up)
			}
			m.app.checkClean(t, after)
		})
	}
}

// An accepted upgrade still works byte for byte, bytes sent right behind
// the request included, and half-close travels.
func TestAcceptedUpgradeIsByteIdentical(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	for _, service := range []string{"web", "auto"} {
		for _, size := range []int{1, 64 << 10} {
			t.Run(fmt.Sprintf("%s/%d bytes", service, size), func(t *testing.T) {
				payload := make([]byte, size)
				rand.NewChaCha8([32]byte{byte(size), 9}).Read(payload)
				early := []byte("early bytes behind the request|")
				c := dialT(t, m.binds[service])
				path := "/upgrade"
				req := "GET " + path + " HTTP/1.1\r\nHost: " + service + "\r\nConnection: Upgrade\r\nUpgrade: echo-proto\r\n" +
					"Quicmesh-Peer-Identity: spiffe://test.local/ns/kube-system/sa/admin\r\n\r\n"
				before := len(m.app.find(path))
				c.Write(append([]byte(req), early...))
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
				if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo-proto" {
					t.Fatalf("upgrade: %v, %v", resp, err)
				}
				go func() {
					c.Write(payload)
					c.CloseWrite()
				}()
				got, err := io.ReadAll(br)
				if err != nil {
					t.Fatalf("reading echo: %v", err)
				}
				want := append(append([]byte{}, early...), payload...)
				if !bytes.Equal(got, want) {
					t.Fatalf("echoed %d bytes, want %d, equal=%v", len(got), len(want), bytes.Equal(got, want))
				}
				up := m.app.find(path)
				if len(up) != before+1 || up[before].header.Get("Quicmesh-Peer-Identity") != clientID {
					t.Fatalf("app saw the upgrade request as %+v", up[before:])
				}
			})
		}
	}
}

// A slow-loris through a tunnel to an HTTP route is closed by the inbound
// header timeout (it used to stay open as long as the client liked).
func TestSlowLorisThroughTunnelIsClosed(t *testing.T) {
	const headerTimeout = time.Second
	m := newSecMesh(t, headerTimeout)
	const n = 20
	for _, service := range []string{"web", "auto"} {
		t.Run(service, func(t *testing.T) {
			before := m.tunnels(t, service)
			conns := make([]*net.TCPConn, n)
			starts := make([]time.Time, n)
			for i := range conns {
				conns[i] = dialT(t, m.binds[service])
				starts[i] = time.Now()
				io.WriteString(conns[i], "G")
			}
			m.waitTunnels(t, service, before+n)
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					stop := make(chan struct{})
					go func() { // a header byte every 100 ms, for ever
						io.WriteString(c, "ET / HTTP/1.1\r\nHost: "+service+"\r\nX-Slow: ")
						tick := time.NewTicker(100 * time.Millisecond)
						defer tick.Stop()
						for {
							select {
							case <-stop:
								return
							case <-tick.C:
								if _, err := io.WriteString(c, "a"); err != nil {
									return
								}
							}
						}
					}()
					defer close(stop)
					rest, err := io.ReadAll(c) // EOF or reset: closed by a sidecar
					elapsed := time.Since(starts[i])
					var ne net.Error
					switch {
					case errors.As(err, &ne) && ne.Timeout():
						errs <- fmt.Errorf("conn %d still open after %v", i, elapsed)
					case len(rest) != 0 && !strings.HasPrefix(string(rest), "HTTP/1.1 408"):
						errs <- fmt.Errorf("conn %d got %q", i, rest)
					case elapsed < headerTimeout:
						errs <- fmt.Errorf("conn %d closed after %v, before the header timeout", i, elapsed)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := m.app.find("/"); len(got) != 0 {
				t.Fatalf("%d slow requests reached the app", len(got))
			}
		})
	}
}

// tcp:// routes stay opaque: a tunnel's bytes arrive byte-identical, even
// bytes that look like HTTP with forged fields (the route says the app is
// not HTTP; HTTP requests the client sidecar recognises are refused with
// 502 as before).
func TestOpaqueRouteStaysRaw(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	random := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{64}).Read(random)
	for _, payload := range [][]byte{{0x16}, random} {
		t.Run(fmt.Sprintf("%d bytes", len(payload)), func(t *testing.T) {
			got, err := roundTrip(t, dialT(t, m.binds["raw"]), payload)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echoed %d bytes (%v), want %d identical", len(got), err, len(payload))
			}
		})
	}
	t.Run("HTTP in a slow-start tunnel", func(t *testing.T) {
		payload := []byte(forgedRequest("/raw", "raw"))
		before := m.tunnels(t, "raw")
		c := dialT(t, m.binds["raw"])
		c.Write(payload[:1])
		m.waitTunnels(t, "raw", before+1)
		got, err := roundTrip(t, c, payload[1:])
		if err != nil || !bytes.Equal(got, payload) { // the echo of the first byte included
			t.Fatalf("echoed %q (%v), want %q", got, err, payload)
		}
	})
}

// HTTP/2 (h2c) smuggled in a slow-start tunnel is served by the inbound
// HTTP/2 server, with the same header hygiene.
func TestH2CThroughSlowTunnel(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	before := m.tunnels(t, "auto")
	c := dialT(t, m.binds["auto"])
	io.WriteString(c, "P")
	m.waitTunnels(t, "auto", before+1)
	tr := &http2.Transport{AllowHTTP: true}
	cc, err := tr.NewClientConn(&skipFirstWrite{Conn: c, skip: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "http://auto/h2-in-tunnel", nil)
	req.Header.Set("Quicmesh-Peer-Identity", "spiffe://test.local/ns/kube-system/sa/admin")
	req.Header.Set("Quicmesh-Service", "raw")
	req.Header["User-Agent"] = []string{""}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok /h2-in-tunnel" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	m.app.checkClean(t, "/h2-in-tunnel")
}

// skipFirstWrite drops the first skip bytes written: the client already
// sent them by hand.
type skipFirstWrite struct {
	net.Conn
	skip int
}

func (s *skipFirstWrite) Write(p []byte) (int, error) {
	if s.skip > 0 {
		k := min(s.skip, len(p))
		s.skip -= k
		n, err := s.Conn.Write(p[k:])
		return n + k, err
	}
	return s.Conn.Write(p)
}

// Neither sidecar invents a User-Agent: Go's HTTP clients add one unless
// told not to.
func TestNoUserAgentAdded(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	t.Run("HTTP/1.1", func(t *testing.T) {
		c := dialT(t, m.binds["web"])
		io.WriteString(c, "GET /no-ua/h1 HTTP/1.1\r\nHost: web\r\n\r\nGET /ua/h1 HTTP/1.1\r\nHost: web\r\nUser-Agent: curl/8.5.0\r\n\r\n")
		br := bufio.NewReader(c)
		for range 2 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	t.Run("h2c", func(t *testing.T) {
		tr := testkit.H2CClient(t).Transport // RoundTrip: no client defaults
		for _, ua := range []string{"", "grpc-go/1.70"} {
			path := "/no-ua/h2c"
			if ua != "" {
				path = "/ua/h2c"
			}
			req, _ := http.NewRequest("GET", "http://"+m.binds["h2"]+path, nil)
			req.Header["User-Agent"] = []string{ua} // "" makes the client send none
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	for _, p := range []struct{ path, want string }{
		{"/no-ua/h1", ""}, {"/ua/h1", "curl/8.5.0"}, {"/no-ua/h2c", ""}, {"/ua/h2c", "grpc-go/1.70"},
	} {
		got := m.app.find(p.path)
		if len(got) != 1 {
			t.Fatalf("%s: app saw %d requests", p.path, len(got))
		}
		if v, ok := got[0].header["User-Agent"]; (p.want == "" && ok) || (p.want != "" && (len(v) != 1 || v[0] != p.want)) {
			t.Errorf("%s: app saw User-Agent %q, want %q", p.path, v, p.want)
		}
	}
}

// Draining the far sidecar closes a keep-alive HTTP connection that a
// tunnel carries once it is idle, instead of holding the drain for the
// whole grace period.
func TestDrainClosesIdleHTTPInTunnels(t *testing.T) {
	m := newSecMesh(t, 10*time.Second)
	c := tunnelVectors[0].open(t, m, "web", "GET /before-drain HTTP/1.1\r\nHost: web\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status %d, close %v: want a kept-alive 200", resp.StatusCode, resp.Close)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.server.Shutdown(ctx); err != nil {
		t.Fatalf("drain: %v (the idle tunnel connection held it)", err)
	}
	if rest, err := io.ReadAll(br); len(rest) != 0 || err != nil {
		t.Fatalf("after the drain: %q, %v; want the connection closed", rest, err)
	}
}
