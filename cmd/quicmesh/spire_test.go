//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/echo"
)

// The real-SPIRE test: a spire-server and a spire-agent (v1.13.3, built by
// .ci/spire.sh) on loopback and unix sockets, join-token node attestation,
// the unix workload attestor selecting workloads by UID. Sidecars are this
// test binary re-executed as `quicmesh proxy --spiffe-socket ...` under
// the registered UIDs.
const (
	spireTD   = "example.org"
	otherTD   = "other.test" // a second trust domain, from the built-in CA
	uidWeb    = 64101        // registered: spiffe://example.org/web
	uidEcho   = 64102        // registered: spiffe://example.org/echo
	uidNobody = 64103        // not registered
	svidTTL   = 60           // seconds; the agent renews at about half of it
)

// TestSPIRE: two sidecars with SVIDs issued by SPIRE carry HTTP and TCP;
// the SVIDs rotate (TTL 1 minute) under load with zero failed requests; a
// workload SPIRE does not know gets no SVID and its sidecar never becomes
// ready; a sidecar of another trust domain is refused until its bundle is
// federated to the callee through SPIRE (bundle set + federatesWith).
func TestSPIRE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sidecars run under their own UIDs for SPIRE's unix workload attestor")
	}
	spireBin := spireBinaries(t)
	dir := sharedTempDir(t)
	self := copyTestBinary(t, dir)

	// The HTTP app answers with the caller's identity (Echo-Peer-Identity).
	httpApp, err := echo.ListenHTTP1("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { httpApp.Close() })
	tcpApp, err := echo.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpApp.Close() })

	spire := startSPIRE(t, spireBin, dir)
	spire.register(t, "/web", uidWeb)
	echoEntry := spire.register(t, "/echo", uidEcho)
	socket := "unix://" + spire.agentSocket

	// Started first so that it has waited through everything else.
	nobody := startSidecar(t, self, dir, "nobody", uidNobody, "--spiffe-socket", socket)

	echoSC := startSidecar(t, self, dir, "echo", uidEcho, "--spiffe-socket", socket,
		"--route", "echo=http://"+httpApp.Addr().String(), "--route", "echotcp=tcp://"+tcpApp.Addr().String(),
		"--accept-trust-domain", otherTD)
	disco := writeDiscovery(t, dir, "web-services.json", map[string]string{
		"echo": echoSC.inbound, "echotcp": echoSC.inbound,
	}, "spiffe://"+spireTD+"/echo")
	httpBind, tcpBind := freePort(t), freePort(t)
	webSC := startSidecar(t, self, dir, "web", uidWeb, "--spiffe-socket", socket, "--discovery-file", disco,
		"--bind", httpBind+"=echo", "--bind", tcpBind+"=echotcp,opaque")
	echoSC.waitReady(t)
	webSC.waitReady(t)

	client := &http.Client{Timeout: 10 * time.Second}
	t.Run("HTTP and TCP with SPIRE's SVIDs", func(t *testing.T) {
		if err := getAs(client, "http://"+httpBind+"/", "spiffe://"+spireTD+"/web"); err != nil {
			t.Fatal(err)
		}
		if err := tcpEcho(tcpBind, []byte("hello over SPIRE\n")); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*sidecarProc{webSC, echoSC} {
			if ids := s.svids(t); len(ids) == 0 || ids[0].ID != "spiffe://"+spireTD+"/"+s.name {
				t.Fatalf("%s sidecar's SVIDs: %+v, want spiffe://%s/%s", s.name, ids, spireTD, s.name)
			}
		}
	})

	t.Run("rotation under load, zero failed requests", func(t *testing.T) {
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := []byte(fmt.Sprintf("worker %d\n", i))
				for ctx.Err() == nil {
					err := getAs(client, "http://"+httpBind+"/", "spiffe://"+spireTD+"/web")
					if err == nil {
						err = tcpEcho(tcpBind, payload)
					}
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
						continue
					}
					ok.Add(1)
				}
			}()
		}
		// Both sidecars must have been handed a second SVID by the agent
		// while the load ran: about half a TTL after the first.
		deadline := time.Now().Add(3 * svidTTL * time.Second)
		for _, s := range []*sidecarProc{webSC, echoSC} {
			s.waitLog(t, deadline, func(string) bool { return len(distinctSerials(s.svids(t))) >= 2 }, "a rotated SVID")
		}
		stop()
		wg.Wait()
		if failed.Load() != 0 || ok.Load() == 0 {
			t.Fatalf("under rotation: %d requests ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
		}
		for _, s := range []*sidecarProc{webSC, echoSC} {
			t.Logf("%s sidecar's SVID serials: %v", s.name, distinctSerials(s.svids(t)))
		}
		t.Logf("%d HTTP+TCP round trips during the rotation, 0 failed", ok.Load())
	})

	// The other trust domain's sidecar: a file identity from the built-in
	// CA, with SPIRE's bundle as a federated bundle and example.org
	// accepted, calling the echo service.
	otherCA, err := identity.NewCA(otherTD, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, otherBundle := writeFileIdentity(t, dir, otherCA, "spiffe://"+otherTD+"/caller")
	spireBundle := filepath.Join(dir, "spire-bundle.pem")
	writeTestFile(t, spireBundle, spire.cli(t, "bundle", "show"))
	otherDisco := writeDiscovery(t, dir, "other-services.json", map[string]string{"echo": echoSC.inbound}, "spiffe://"+spireTD+"/echo")
	otherSidecar := func(name string) (*sidecarProc, string) {
		bind := freePort(t)
		s := startSidecar(t, self, dir, name, 0, "--cert", otherCert, "--key", otherKey, "--bundle", otherBundle,
			"--federated-bundle", spireTD+"="+spireBundle, "--accept-trust-domain", spireTD,
			"--discovery-file", otherDisco, "--bind", bind+"=echo")
		s.waitReady(t)
		return s, bind
	}

	t.Run("another trust domain is refused until federated", func(t *testing.T) {
		before := echoSC.metric(t, `quicmesh_handshake_failures_total{direction="inbound",reason="untrusted"}`)
		caller, bind := otherSidecar("other-unfederated")
		if err := getAs(client, "http://"+bind+"/", "spiffe://"+otherTD+"/caller"); err == nil {
			t.Fatal("a caller of an unfederated trust domain got through")
		}
		if after := echoSC.metric(t, `quicmesh_handshake_failures_total{direction="inbound",reason="untrusted"}`); after <= before {
			t.Fatalf("the echo sidecar counted no untrusted inbound handshake (%v before, %v after)", before, after)
		}
		caller.stop(t)

		// Federate: SPIRE learns other.test's bundle and hands it to the
		// echo workload, whose entry now federates with other.test.
		writeTestFile(t, filepath.Join(dir, "other-ca.pem"), otherCA.BundlePEM())
		spire.cli(t, "bundle", "set", "-id", "spiffe://"+otherTD, "-path", filepath.Join(dir, "other-ca.pem"))
		spire.cli(t, "entry", "update", "-entryID", echoEntry, "-parentID", spire.agentID, "-spiffeID", "spiffe://"+spireTD+"/echo",
			"-selector", "unix:uid:"+strconv.Itoa(uidEcho), "-x509SVIDTTL", strconv.Itoa(svidTTL), "-federatesWith", "spiffe://"+otherTD)
		echoSC.waitLog(t, time.Now().Add(time.Minute), func(string) bool {
			ids := echoSC.svids(t)
			return slices.Contains(ids[len(ids)-1].Federated, otherTD)
		}, "other.test's bundle from the agent")

		caller, bind = otherSidecar("other-federated")
		if err := getAs(client, "http://"+bind+"/", "spiffe://"+otherTD+"/caller"); err != nil {
			t.Fatalf("federated caller: %v", err)
		}
		caller.stop(t)
	})

	t.Run("a workload SPIRE does not know stays not ready", func(t *testing.T) {
		if code := nobody.readyStatus(t); code != http.StatusServiceUnavailable {
			t.Fatalf("/ready of the unregistered workload's sidecar: %d, want 503", code)
		}
		if ids := nobody.svids(t); len(ids) != 0 {
			t.Fatalf("the unregistered workload got SVIDs: %+v", ids)
		}
		// Nothing is served: its inbound port is free.
		if pc, err := net.ListenPacket("udp", nobody.inbound); err != nil {
			t.Fatalf("the unregistered workload's sidecar holds its inbound port: %v", err)
		} else {
			pc.Close()
		}
		if !strings.Contains(nobody.logText(t), "waiting for the first X.509-SVID") {
			t.Fatal("the unregistered workload's sidecar does not say what it waits for")
		}
	})

	for _, s := range []*sidecarProc{webSC, echoSC, nobody} {
		s.stop(t)
	}
}

// spireBinaries returns the directory holding spire-server and
// spire-agent: $QUICMESH_SPIRE_BIN, or what .ci/spire.sh prints (it
// builds them into the per-machine cache once, a no-op afterwards).
func spireBinaries(t *testing.T) string {
	dir := os.Getenv("QUICMESH_SPIRE_BIN")
	if dir == "" {
		t.Log("QUICMESH_SPIRE_BIN unset: running .ci/spire.sh (builds SPIRE once per machine, minutes)")
		out, err := exec.Command("bash", "../../.ci/spire.sh").Output()
		if err != nil {
			t.Fatalf(".ci/spire.sh: %v\n%s", err, stderrOf(err))
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"spire-server", "spire-agent"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("SPIRE binaries missing (run .ci/spire.sh): %v", err)
		}
	}
	return dir
}

func stderrOf(err error) string {
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return string(ee.Stderr)
	}
	return ""
}

// sharedTempDir is a temporary directory the test's other UIDs can read
// and traverse (t.TempDir's are private to root).
func sharedTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "quicmesh-spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// copyTestBinary copies this test binary where the sidecars' UIDs can
// execute it.
func copyTestBinary(t *testing.T, dir string) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(dir, "quicmesh")
	if err := os.WriteFile(self, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return self
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeFileIdentity(t *testing.T, dir string, ca *identity.CA, id string) (cert, key, bundle string) {
	certPEM, keyPEM, err := ca.IssuePEM(identity.MustParseID(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, bundle = filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key"), filepath.Join(dir, "other-bundle.pem")
	writeTestFile(t, cert, certPEM)
	writeTestFile(t, key, keyPEM)
	writeTestFile(t, bundle, ca.BundlePEM())
	return cert, key, bundle
}

// writeDiscovery writes a static discovery file: each service at one
// endpoint presenting identity.
func writeDiscovery(t *testing.T, dir, name string, services map[string]string, identity string) string {
	type endpoint struct {
		Addr     string `json:"addr"`
		Identity string `json:"identity"`
	}
	type service struct {
		Endpoints []endpoint `json:"endpoints"`
	}
	doc := struct {
		Services map[string]service `json:"services"`
	}{Services: map[string]service{}}
	for svc, addr := range services {
		doc.Services[svc] = service{Endpoints: []endpoint{{Addr: addr, Identity: identity}}}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	writeTestFile(t, path, b)
	return path
}

// freePort and freeMeshPort pick loopback ports for sidecar processes,
// which must be told their addresses before they start. Another process
// could take a port between the pick and the bind (the in-process tests
// bind port 0 instead); the sidecar then exits with "address already in
// use", which fails the test loudly rather than hanging it.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// freeMeshPort is a loopback port free for UDP and TCP at once: a
// sidecar in auto transport mode binds both on its --inbound port number
// (QUIC and the TCP fallback), so a port free for UDP alone can still
// fail its start with "address already in use". It is taken from below
// the kernel's ephemeral range: tests kill a sidecar and start it again
// on the same port, and a port the kernel hands out to outgoing
// connections could meanwhile become some connection's source port (a
// client's own redial to the dead port can even connect to itself) —
// seen as "server-again: bind: address already in use", 2 of 120 loaded
// kill runs.
func freeMeshPort(t *testing.T) string {
	lo, hi := belowEphemeralPorts()
	for range 200 {
		var addr string
		if lo < hi {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo)))
		} else {
			addr = "127.0.0.1:0"
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue // taken for UDP: pick another
		}
		addr = pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		pc.Close()
		if err != nil {
			continue // taken for TCP: pick another
		}
		ln.Close()
		return addr
	}
	t.Fatal("no loopback port free for both UDP and TCP in 200 tries")
	return ""
}

// belowEphemeralPorts is a range of ports [lo, hi) the kernel never picks
// as a source port (those below net.ipv4.ip_local_port_range), or an empty
// range when that cannot be read or leaves too little room.
func belowEphemeralPorts() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first < 4096 {
		return 0, 0
	}
	return max(2048, first-12000), first
}

// getAs GETs url through a sidecar and checks that the app saw the
// caller as wantPeer.
func getAs(client *http.Client, url, wantPeer string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		return fmt.Errorf("GET %s: %d %q (%s)", url, resp.StatusCode, body, resp.Header.Get("Quicmesh-Proxy-Error"))
	}
	if got := resp.Header.Get("Echo-Peer-Identity"); got != wantPeer {
		return fmt.Errorf("GET %s: the app saw the caller as %q, want %q", url, got, wantPeer)
	}
	return nil
}

// tcpEcho sends payload over an opaque bind and wants it echoed.
func tcpEcho(addr string, payload []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("TCP echo: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("TCP echo: got %q, want %q", got, payload)
	}
	return nil
}

// process is a child process whose output goes to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProcess starts bin as uid (0: as the test) with env added to a
// minimal environment. It is killed at the end of the test if still
// running, and its log is shown if the test failed.
func startProcess(t *testing.T, dir, name string, uid int, env []string, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8<<10 {
				b = b[len(b)-8<<10:]
			}
			t.Logf("--- %s log (tail) ---\n%s", name, b)
		}
	})
	return p
}

func (p *process) logText(t *testing.T) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitLog waits until cond holds for the process's log, failing at
// deadline or if the process exits. The log is re-read at most every
// 50ms.
func (p *process) waitLog(t *testing.T, deadline time.Time, cond func(log string) bool, what string) {
	t.Helper()
	for !cond(p.logText(t)) {
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) while waiting for %s", p.name, p.err, what)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s by the deadline", p.name, what)
		}
	}
}

// stop sends SIGTERM and wants a clean exit (0: a race report would
// make it 66).
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("%s did not exit within a minute of SIGTERM", p.name)
	}
	if p.err != nil {
		t.Errorf("%s exited with %v", p.name, p.err)
	}
}

type spireSetup struct {
	bin, serverSocket, agentSocket, agentID string
}

// startSPIRE starts a spire-server and a spire-agent attested by join
// token and waits until both are healthy.
func startSPIRE(t *testing.T, bin, dir string) *spireSetup {
	t.Helper()
	s := &spireSetup{
		bin:          bin,
		serverSocket: filepath.Join(dir, "server", "api.sock"),
		agentSocket:  filepath.Join(dir, "agent", "api.sock"),
	}
	for _, d := range []string{"server/data", "agent/data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(freePort(t))
	serverConf := filepath.Join(dir, "server.conf")
	writeTestFile(t, serverConf, []byte(fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = %s
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "WARN"
  default_x509_svid_ttl = "%ds"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`, port, s.serverSocket, spireTD, filepath.Join(dir, "server/data"), svidTTL, filepath.Join(dir, "server/data/datastore.sqlite3"))))
	server := startProcess(t, dir, "spire-server", 0, nil, filepath.Join(bin, "spire-server"), "run", "-config", serverConf)
	waitCommand(t, server, filepath.Join(bin, "spire-server"), "healthcheck", "-socketPath", s.serverSocket)

	// "Token: T", then a warning that no SPIFFE ID was given: the agent
	// gets spiffe://TD/spire/agent/join_token/T.
	tokenOut := string(s.cli(t, "token", "generate", "-ttl", "600"))
	firstLine, _, _ := strings.Cut(tokenOut, "\n")
	token, ok := strings.CutPrefix(firstLine, "Token: ")
	if !ok || token == "" {
		t.Fatalf("token generate printed %q", tokenOut)
	}
	s.agentID = "spiffe://" + spireTD + "/spire/agent/join_token/" + token

	agentConf := filepath.Join(dir, "agent.conf")
	writeTestFile(t, agentConf, []byte(fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = %s
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  experimental {
    sync_interval = "1s"
  }
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`, filepath.Join(dir, "agent/data"), port, s.agentSocket, spireTD)))
	agent := startProcess(t, dir, "spire-agent", 0, nil, filepath.Join(bin, "spire-agent"), "run", "-config", agentConf, "-joinToken", token)
	waitCommand(t, agent, filepath.Join(bin, "spire-agent"), "healthcheck", "-socketPath", s.agentSocket)
	return s
}

// waitCommand runs a health check command until it succeeds, failing if
// p exits first or after a minute.
func waitCommand(t *testing.T, p *process, name string, args ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := exec.Command(name, args...).Run()
		if err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before it was healthy", p.name, p.err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy within a minute: %v", p.name, err)
		}
	}
}

// cli runs a spire-server command against the server's socket and returns
// its output.
func (s *spireSetup) cli(t *testing.T, args ...string) []byte {
	t.Helper()
	args = append(args, "-socketPath", s.serverSocket)
	out, err := exec.Command(filepath.Join(s.bin, "spire-server"), args...).Output()
	if err != nil {
		t.Fatalf("spire-server %s: %v\n%s%s", strings.Join(args, " "), err, out, stderrOf(err))
	}
	return out
}

// register creates an entry for path in the trust domain, selecting the
// processes of uid on our agent, with the short SVID TTL; it returns the
// entry's ID.
func (s *spireSetup) register(t *testing.T, path string, uid int) string {
	t.Helper()
	out := s.cli(t, "entry", "create", "-parentID", s.agentID, "-spiffeID", "spiffe://"+spireTD+path,
		"-selector", "unix:uid:"+strconv.Itoa(uid), "-x509SVIDTTL", strconv.Itoa(svidTTL), "-output", "json")
	var res struct {
		Results []struct {
			Entry struct {
				ID string `json:"id"`
			} `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Results) != 1 || res.Results[0].Entry.ID == "" {
		t.Fatalf("entry create printed %s (%v)", out, err)
	}
	return res.Results[0].Entry.ID
}

// sidecarProc is a quicmesh sidecar process.
type sidecarProc struct {
	*process
	inbound, admin string
}

// startSidecar runs `quicmesh proxy` as uid with the given identity and
// service flags, on free loopback ports, logging JSON at debug level.
func startSidecar(t *testing.T, self, dir, name string, uid int, args ...string) *sidecarProc {
	t.Helper()
	s := &sidecarProc{inbound: freeMeshPort(t), admin: freePort(t)}
	args = append([]string{"proxy", "--inbound", s.inbound, "--admin", s.admin, "--http-proxy", "",
		"--log-level", "debug", "--log-format", "json", "--grace", "5s"}, args...)
	s.process = startProcess(t, dir, name, uid, []string{reexecEnv + "=1"}, self, args...)
	return s
}

func (s *sidecarProc) readyStatus(t *testing.T) int {
	resp, err := http.Get("http://" + s.admin + "/ready")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitReady waits for /ready to answer 200.
func (s *sidecarProc) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for s.readyStatus(t) != http.StatusOK {
		select {
		case <-s.done:
			t.Fatalf("%s exited (%v) before it was ready", s.name, s.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within a minute", s.name)
		}
	}
}

// metric returns the value of one sample on /metrics (0 if absent).
func (s *sidecarProc) metric(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

// svidLog is one "X.509-SVID received" log line.
type svidLog struct {
	ID        string   `json:"id"`
	Serial    string   `json:"serial"`
	Federated []string `json:"federated"`
}

var svidReceived = regexp.MustCompile(`(?m)^.*"msg":"spiffe: X.509-SVID received".*$`)

// svids are the SVIDs the sidecar logged receiving, in order.
func (s *sidecarProc) svids(t *testing.T) []svidLog {
	var out []svidLog
	for _, line := range svidReceived.FindAllString(s.logText(t), -1) {
		var l svidLog
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("%s log line %q: %v", s.name, line, err)
		}
		out = append(out, l)
	}
	return out
}

func distinctSerials(logs []svidLog) []string {
	var serials []string
	for _, l := range logs {
		if !slices.Contains(serials, l.Serial) {
			serials = append(serials, l.Serial)
		}
	}
	return serials
}
