package dns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/quicmesh/quicmesh/discovery"
)

// nsdServer is a real NSD process on loopback serving the zone mesh.test
// from a zone file; setZone rewrites the file and reloads it through
// nsd-control.
type nsdServer struct {
	dir, conf, zoneFile string
	addr                string
	control             string // the nsd-control binary
	cmd                 *exec.Cmd
	exited              chan struct{}
	serial              int
}

// lookPath finds a daemon binary, also in the sbin directories a non-login
// PATH may lack. Without it the test is skipped, unless under CI, where
// .ci/run installs it and its absence is a failure.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run installs the Debian package nsd", name)
	}
	t.Skipf("%s is not installed (apt-get install nsd; .ci/run does) and CI is unset: skipping the test against a real DNS server", name)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// freePort returns a loopback port free for both UDP and TCP just now.
func freePort(t *testing.T) string {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		pc.Close()
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return ""
}

// startNSD starts NSD serving records (absolute names, one per line).
func startNSD(t *testing.T, records string) *nsdServer {
	t.Helper()
	bin := lookPath(t, "nsd")
	s := &nsdServer{control: lookPath(t, "nsd-control")}
	// A short directory: the control socket's path must fit a sockaddr_un.
	dir, err := os.MkdirTemp("", "qm-nsd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s.dir, s.conf, s.zoneFile = dir, filepath.Join(dir, "nsd.conf"), filepath.Join(dir, "mesh.test.zone")
	s.addr = freePort(t)
	host, port, _ := net.SplitHostPort(s.addr)
	conf := fmt.Sprintf(`server:
  ip-address: %[1]s@%[2]s
  port: %[2]s
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "%[3]s"
  database: ""
  zonelistfile: "%[3]s/zone.list"
  xfrdfile: "%[3]s/xfrd.state"
  xfrdir: "%[3]s"
  pidfile: "%[3]s/nsd.pid"
  logfile: "%[3]s/nsd.log"
  server-count: 1
  tcp-count: 16
  verbosity: 1
remote-control:
  control-enable: yes
  control-interface: %[3]s/ctl.sock
zone:
  name: mesh.test
  zonefile: mesh.test.zone
`, host, port, dir)
	if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s.writeZone(t, records)
	s.cmd = exec.Command(bin, "-d", "-c", s.conf)
	out, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting nsd: %v", err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.stop)
	s.waitSerial(t)
	return s
}

// writeZone writes the zone file with the next serial and records.
func (s *nsdServer) writeZone(t *testing.T, records string) {
	t.Helper()
	s.serial++
	zone := fmt.Sprintf(`$ORIGIN mesh.test.
$TTL 1
@ 1 IN SOA ns.mesh.test. admin.mesh.test. %d 3600 600 86400 1
@ 1 IN NS ns.mesh.test.
ns 1 IN A 127.0.0.1
`, s.serial)
	for line := range strings.SplitSeq(records, "\n") {
		zone += strings.TrimSpace(line) + "\n"
	}
	tmp := s.zoneFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(zone), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.zoneFile); err != nil {
		t.Fatal(err)
	}
}

// setZone replaces the records and returns once NSD serves them.
func (s *nsdServer) setZone(t *testing.T, records string) {
	t.Helper()
	s.writeZone(t, records)
	if out, err := exec.Command(s.control, "-c", s.conf, "reload", "mesh.test").CombinedOutput(); err != nil {
		t.Fatalf("nsd-control reload: %v: %s", err, out)
	}
	s.waitSerial(t)
}

// waitSerial waits until NSD answers with the zone's current serial.
func (s *nsdServer) waitSerial(t *testing.T) {
	t.Helper()
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := new(dns.Msg)
		m.SetQuestion("mesh.test.", dns.TypeSOA)
		r, _, err := c.Exchange(m, s.addr)
		if err == nil && len(r.Answer) == 1 {
			if soa, ok := r.Answer[0].(*dns.SOA); ok && soa.Serial == uint32(s.serial) {
				return
			}
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "stderr"))
			t.Fatalf("nsd exited: %s", log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "nsd.log"))
			t.Fatalf("nsd does not serve serial %d within 30s (last: %v): %s", s.serial, err, log)
		}
	}
}

// stop terminates NSD (and its server children) and waits for it.
func (s *nsdServer) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// A real server, so that what the package relies on — SRV answers,
// TXT strings, negative answers with an SOA, TTLs — is checked against
// more than this package's idea of DNS.
func TestAgainstNSD(t *testing.T) {
	ns := startNSD(t, `_quicmesh._udp.echo.mesh.test. IN SRV 0 1 4143 a.mesh.test.
		a.mesh.test. IN A 127.0.0.2
		a.mesh.test. IN AAAA ::1
		a.mesh.test. IN TXT "spiffe=`+idEcho+`"`)
	r, err := New(Options{Zone: "mesh.test", Nameservers: []string{ns.addr}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	res, err := r.resolve(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	if want := []discovery.Endpoint{ep("127.0.0.2:4143", idEcho, 50), ep("[::1]:4143", idEcho, 50)}; !reflect.DeepEqual(res.eps, want) {
		t.Errorf("endpoints %v, want %v", res.eps, want)
	}
	if res.ttl != 1 || !res.exists {
		t.Errorf("ttl %d exists %v, want 1 true", res.ttl, res.exists)
	}
	if _, err := r.Resolve(context.Background(), "nosuch"); err == nil || !strings.Contains(err.Error(), "no SRV records") {
		t.Errorf("unknown service: %v", err)
	}
}
