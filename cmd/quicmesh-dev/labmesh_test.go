//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/intercept"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// metricsOf returns the admin metrics of pod's sidecar.
func metricsOf(t *testing.T, cl *cluster.Cluster, pod string) string {
	t.Helper()
	var body string
	if err := cl.Do(cl.Pod(pod), func() error {
		var err error
		body, err = adminGet("http://127.0.0.1:" + strconv.Itoa(intercept.DefaultAdminPort) + "/metrics")
		return err
	}); err != nil {
		t.Fatalf("pod %s metrics: %v", pod, err)
	}
	return body
}

// The transparent path in a 4-pod lab: apps in pod a reach the services
// of b, c and d by DNS name and virtual IP, and the pods by IP, with
// curl, net/http, h2c, grpc-go and raw TCP clients that have no proxy
// configuration, through the sidecars over mTLS QUIC; the ports the
// clients dialled reach the apps; an address outside the mesh is passed
// through untouched; plain TCP from outside the mesh reaches a permissive
// pod and not a strict one; and tear-down leaves nothing behind.
func TestLabTransparentMesh(t *testing.T) {
	testkit.NeedNetns(t, netlab.Available)
	testkit.NeedNetns(t, func() error { _, err := exec.LookPath("setpriv"); return err })
	testkit.NeedNetns(t, func() error { _, err := exec.LookPath("curl"); return err })
	// The lab runs the sidecar as a process of its own, as the proxy UID.
	bin := testkit.BuildQuicmesh(t, t.TempDir())
	// The lab's apps and clients are copies of this test binary: they
	// must run quicmesh-dev, not the tests.
	t.Setenv(reexecEnv, "1")
	const appUID, proxyUID = 2001, 2002
	cl, st, err := buildLab(labSpec{
		// netlab makes every name unique (the prefix, this process, a counter): labs
		// parallel test packages never share one.
		prefix: "tmesh", pods: []string{"a", "b", "c", "d"}, subnet: "10.88.12.0/24",
		appUID: appUID, proxyUID: proxyUID, ready: time.Minute, stopGrace: 5 * time.Second,
		mesh: &labMesh{quicmesh: bin, proxyUID: proxyUID, policy: "permissive", strict: []string{"d"}, serviceSubnet: labServiceSubnet},
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			cl.Close()
		}
	})
	self, err := cl.Share(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	env := []string{reexecEnv + "=1"}
	svc, addr := map[string]labService{}, map[string]string{}
	for _, s := range st.Services {
		svc[s.Pod] = s
	}
	for _, p := range st.Pods {
		addr[p.Name] = p.Addr
	}
	idA := svc["a"].ID

	calls := []struct {
		spec labCallSpec
		pod  string // who must answer
		port string // at which port
	}{
		{labCallSpec{"curl", svc["b"].DNS}, "b", "8080"},
		{labCallSpec{"http1", svc["b"].DNS + ":80"}, "b", "8080"},
		{labCallSpec{"http1", svc["b"].VIP + ":8082"}, "b", "8082"}, // the same app's second port
		{labCallSpec{"http1", addr["c"] + ":8080"}, "c", "8080"},
		{labCallSpec{"http1", addr["c"] + ":8082"}, "c", "8082"},
		{labCallSpec{"h2c", svc["c"].VIP + ":8081"}, "c", "8081"},
		{labCallSpec{"grpc", svc["c"].DNS + ":9090"}, "c", "9090"},
		{labCallSpec{"grpc", svc["d"].VIP + ":9090"}, "d", "9090"},
		{labCallSpec{"grpc", addr["b"] + ":9090"}, "b", "9090"},
		{labCallSpec{"tcp", svc["d"].DNS + ":7000"}, "d", ""},
		{labCallSpec{"tcp", svc["b"].VIP + ":7000"}, "b", ""},
		{labCallSpec{"tcp", addr["c"] + ":7000"}, "c", ""},
	}
	for _, c := range calls {
		r := labCall(cl, cl.Pod("a"), appUID, self, env, c.spec)
		if !r.OK {
			t.Errorf("%s %s: %s", c.spec.proto, c.spec.target, r.Error)
			continue
		}
		if c.spec.proto == "tcp" {
			continue // echoed, checked by the client; the app learns nothing
		}
		if want := addr[c.pod] + ":" + c.port; r.ServerAddr != want {
			t.Errorf("%s %s: the app was reached at %q, want %s", c.spec.proto, c.spec.target, r.ServerAddr, want)
		}
		if r.PeerIdentity != idA {
			t.Errorf("%s %s: the app saw caller %q, want %s", c.spec.proto, c.spec.target, r.PeerIdentity, idA)
		}
	}
	if t.Failed() {
		t.Fatalf("sidecar logs of a:\n%s", procLog(cl, "a", "sidecar"))
	}

	ma := metricsOf(t, cl, "a")
	if n := sumMetric(ma, "quicmesh_quic_connections_open", `direction="outbound"`); n != 3 {
		t.Errorf("pod a's sidecar has %d outbound QUIC connections open, want 3 (b, c, d)", n)
	}
	if n := sumMetric(ma, "quicmesh_transparent_outbound_total", `kind="service"`); n != 8 {
		t.Errorf("pod a: %d service connections, want 8", n)
	}
	if n := sumMetric(ma, "quicmesh_transparent_outbound_total", `kind="endpoint"`); n != 4 {
		t.Errorf("pod a: %d endpoint connections, want 4", n)
	}
	// Every tunnel and request reached b, c and d as mesh traffic.
	for _, p := range []string{"b", "c", "d"} {
		m := metricsOf(t, cl, p)
		if n := sumMetric(m, "quicmesh_inbound_connections_total", `source="mesh"`, `result="delivered"`); n == 0 {
			t.Errorf("pod %s: no mesh traffic delivered", p)
		}
		if n := sumMetric(m, "quicmesh_inbound_connections_total", `source="plain"`); n != 0 {
			t.Errorf("pod %s: %d plain connections before any plain client", p, n)
		}
	}

	t.Run("outside the mesh passes through", func(t *testing.T) {
		// A TCP echo in the hub namespace: outside the mesh, no sidecar.
		var ln net.Listener
		if err := cl.DoHub(func() error {
			var err error
			ln, err = net.Listen("tcp", net.JoinHostPort(st.Gateway, "7070"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var mu sync.Mutex
		var peers []string
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				peers = append(peers, c.RemoteAddr().String())
				mu.Unlock()
				io.Copy(c, c)
				c.Close()
			}
		}()
		r := labCall(cl, cl.Pod("a"), appUID, self, env, labCallSpec{"tcp", net.JoinHostPort(st.Gateway, "7070")})
		ln.Close()
		<-done
		if !r.OK {
			t.Fatalf("tcp to %s:7070: %s", st.Gateway, r.Error)
		}
		mu.Lock()
		defer mu.Unlock()
		// Untouched: one connection, from pod a's own address (its
		// sidecar's pass-through dial was not redirected again: no loop).
		if len(peers) != 1 || !strings.HasPrefix(peers[0], addr["a"]+":") {
			t.Errorf("the server outside the mesh saw connections from %v, want one from %s", peers, addr["a"])
		}
		m := metricsOf(t, cl, "a")
		if n := sumMetric(m, "quicmesh_transparent_outbound_total", `kind="passthrough"`); n != 1 {
			t.Errorf("pod a: %d pass-through connections, want 1", n)
		}
		if n := sumMetric(m, "quicmesh_transparent_outbound_total", `kind="not_redirected"`); n != 0 {
			t.Errorf("pod a: %d connections reached the transparent listener without a redirect (a loop?)", n)
		}
	})

	t.Run("plain TCP: permissive and strict", func(t *testing.T) {
		plain := func(pod string) error {
			var conn net.Conn
			if err := cl.DoHub(func() error {
				var err error
				conn, err = net.DialTimeout("tcp", net.JoinHostPort(addr[pod], "7000"), 10*time.Second)
				return err
			}); err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			msg := []byte("\x00plain client\n")
			if _, err := conn.Write(msg); err != nil {
				return err
			}
			conn.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(conn)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, msg) {
				return fmt.Errorf("echoed %q, want %q", got, msg)
			}
			return nil
		}
		if err := plain("b"); err != nil {
			t.Errorf("plain client to permissive pod b: %v", err)
		}
		if err := plain("d"); err == nil {
			t.Errorf("plain client to strict pod d: echoed, want refused")
		}
		mb, md := metricsOf(t, cl, "b"), metricsOf(t, cl, "d")
		if n := sumMetric(mb, "quicmesh_inbound_connections_total", `source="plain"`, `result="delivered"`); n != 1 {
			t.Errorf("pod b: %d plain connections delivered, want 1", n)
		}
		if n := sumMetric(md, "quicmesh_inbound_connections_total", `source="plain"`, `result="refused"`); n != 1 {
			t.Errorf("pod d: %d plain connections refused, want 1", n)
		}
		if n := sumMetric(md, "quicmesh_inbound_connections_total", `source="plain"`, `result="delivered"`); n != 0 {
			t.Errorf("pod d (strict): %d plain connections delivered", n)
		}
		// The strict pod still takes mesh traffic.
		if n := sumMetric(md, "quicmesh_inbound_connections_total", `source="mesh"`, `result="delivered"`); n == 0 {
			t.Errorf("pod d (strict): no mesh traffic delivered")
		}
	})

	procs := cl.Processes()
	closed = true
	if err := cl.Close(); err != nil {
		t.Fatalf("tearing down: %v", err)
	}
	labGone(t, st)
	for _, p := range procs {
		if alive(p.Pid()) {
			t.Errorf("%s/%s (pid %d) is left", p.Pod.Name, p.Label, p.Pid())
		}
	}
	// Links: the pods' and the hub's interfaces lived in their
	// namespaces; none may be left in the host's.
	if out, err := exec.Command("ip", "-o", "link").CombinedOutput(); err != nil {
		t.Errorf("ip link: %v", err)
	} else if strings.Contains(string(out), cl.ID()) {
		t.Errorf("links of lab %s left in the host namespace:\n%s", cl.ID(), out)
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err == nil && strings.Contains(string(out), cl.ID()) {
		t.Errorf("namespaces of lab %s left:\n%s", cl.ID(), out)
	}
}

// procLog is the log of process label in pod.
func procLog(cl *cluster.Cluster, pod, label string) string {
	for _, p := range cl.Processes() {
		if p.Pod.Name == pod && p.Label == label {
			return p.LogTail(8192)
		}
	}
	return ""
}
