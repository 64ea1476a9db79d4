package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/testkit"
)

// runCmd runs the quicmesh CLI in-process.
func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// workload creates a CA and one workload certificate in dir.
func workload(t *testing.T, dir, id, name string) (cert, key, bundle string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "ca", "ca.crt")); err != nil {
		if code, _, errs := runCmd("ca", "init", "--dir", filepath.Join(dir, "ca"), "--trust-domain", "test.local"); code != 0 {
			t.Fatalf("ca init: %s", errs)
		}
	}
	if code, _, errs := runCmd("ca", "issue", "--ca-dir", filepath.Join(dir, "ca"), "--id", id, "--name", name, "--out", filepath.Join(dir, name)); code != 0 {
		t.Fatalf("ca issue: %s", errs)
	}
	return filepath.Join(dir, name, name+".crt"), filepath.Join(dir, name, name+".key"), filepath.Join(dir, name, "bundle.crt")
}

// takenAddrs returns a TCP and a UDP address on loopback that sockets of
// the test hold until it ends, for the "already in use" errors.
func takenAddrs(t *testing.T) (tcp, udp string) {
	t.Helper()
	tcpTaken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpTaken.Close() })
	udpTaken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udpTaken.Close() })
	return tcpTaken.Addr().String(), udpTaken.LocalAddr().String()
}

// A real sidecar process's lifecycle, in-process: ready on /ready, metrics
// on /metrics, graceful exit 0 on POST /shutdown.
func TestProxyLifecycle(t *testing.T) {
	dir := t.TempDir()
	cert, key, bundle := workload(t, dir, "spiffe://test.local/web", "web")
	done := make(chan int, 1)
	var errb testkit.LogBuffer
	// The admin server binds port 0 and the test learns the address from
	// the "ready" log line: a port picked free beforehand can be taken by
	// another process before the sidecar binds it.
	go func() {
		done <- run([]string{"proxy", "--cert", cert, "--key", key, "--bundle", bundle,
			"--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0",
			"--admin-shutdown", "--grace", "2s", "--log-format", "json"}, io.Discard, &errb)
	}()
	deadline := testkit.HangGuard(t)
	var admin string
	for admin == "" {
		for _, line := range strings.Split(errb.String(), "\n") {
			var rec struct{ Msg, Admin string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "ready" {
				admin = rec.Admin
			}
		}
		select {
		case code := <-done:
			t.Fatalf("proxy exited with %d before it was ready\n%s", code, errb.String())
		default:
		}
		if admin == "" && time.Now().After(deadline) {
			t.Fatalf("never logged ready\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Ready is logged once /ready answers 200.
	resp, err := http.Get("http://" + admin + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/ready: status %d after the ready log line", resp.StatusCode)
	}
	resp, err = http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"quicmesh_identity_cert_expiry_timestamp_seconds", "quicmesh_quic_connections_open", "go_goroutines"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err = http.Post("http://"+admin+"/shutdown", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after graceful shutdown\n%s", code, errb.String())
		}
	case <-time.After(time.Until(deadline)):
		t.Fatal("proxy did not exit after POST /shutdown")
	}
	if !strings.Contains(errb.String(), `"msg":"stopped"`) {
		t.Fatalf("no structured stop log:\n%s", errb.String())
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"identity":{"cert":"a","key":"b","bundle":"c"},"inbound":{"listen":"0.0.0.0:4143","routes":{"echo":"h2c://127.0.0.1:7000"}},"outbound":{"binds":[{"listen":"127.0.0.1:7001","service":"echo","opaque":true}],"http_proxy":"","detect_timeout":"1s"},"limits":{"idle_timeout":"60s"}}`))
	f.Add([]byte(`{"limits":{"keep_alive":"-1s"}}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`{"identity":{"cert":"a","key":"b","bundle":"c"},"inbound":{"routes":{"api":"127.0.0.1:1"},"authorization":{"default":"deny","routes":{"api":["spiffe://td/web","spiffe://other/*"]}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig(data, "fuzz")
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "config fuzz") {
			t.Fatalf("error does not name the file: %v", err)
		}
		_ = fmt.Sprint(cfg)
		if err != nil {
			return
		}
		// Whatever a parsed file holds, merging it with no flags gives
		// options or one error line, never a panic.
		c, flags := newProxyCommand(io.Discard, io.Discard)
		if _, ok := c.Parse(nil); !ok {
			t.Fatal("no flags do not parse")
		}
		if _, err := mergeProxyOptions(cfg, flags, setFlags(c.Flags)); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("merge error is more than one line: %q", err)
		}
	})
}
