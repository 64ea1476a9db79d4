//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/bench/cluster"
	"github.com/quicmesh/quicmesh/bench/netlab"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// labUp starts `quicmesh-dev lab up` as a process and returns once it
// says the lab is up, with the state it wrote.
func labUp(t *testing.T, name string, args ...string) (*exec.Cmd, *labState, *exitWatch) {
	t.Helper()
	testkit.NeedNetns(t, netlab.Available)
	testkit.NeedNetns(t, func() error { _, err := exec.LookPath("setpriv"); return err })
	cmd := exec.Command(os.Args[0], append([]string{"lab", "up", "--name", name}, args...)...)
	cmd.Env = append(os.Environ(), reexecEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := &exitWatch{done: make(chan struct{})}
	lines := bufio.NewScanner(out)
	var seen strings.Builder
	for lines.Scan() {
		seen.WriteString(lines.Text() + "\n")
		if strings.Contains(lines.Text(), "is up;") {
			break
		}
	}
	go func() {
		io.Copy(io.Discard, out)
		exited.err = cmd.Wait()
		close(exited.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited.done
		cluster.SweepStale()
	})
	s, err := readState(name)
	if err != nil || s == nil {
		t.Fatalf("lab up printed:\n%s\nstderr: %s\nstate: %v, %v", seen.String(), stderr.String(), s, err)
	}
	return cmd, s, exited
}

// exitWatch is how a process ended: err is valid once done is closed.
type exitWatch struct {
	done chan struct{}
	err  error
}

// labGone checks that nothing of the lab is left.
func labGone(t *testing.T, s *labState) {
	t.Helper()
	nss := []string{s.Hub}
	for _, p := range s.Pods {
		nss = append(nss, p.NS)
	}
	for _, ns := range nss {
		for _, path := range []string{"/var/run/netns/" + ns, "/etc/netns/" + ns} {
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s is left (%v)", path, err)
			}
		}
	}
	for _, path := range []string{s.Dir, statePath(s.Name)} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left (%v)", path, err)
		}
	}
	for _, p := range s.Processes {
		if alive(p.Pid) {
			t.Errorf("%s/%s (pid %d) is left", p.Pod, p.Label, p.Pid)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s.Dir) {
			t.Errorf("%s: %q is left", filepath.Dir(p), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

func runCapture(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestLabUpStatusDown(t *testing.T) {
	name := fmt.Sprintf("t%d", os.Getpid())
	_, s, exited := labUp(t, name, "--pods", "a,b", "--subnet", "10.88.6.0/24", "--intercept")
	if len(s.Pods) != 2 || s.Pods[1].Addr != "10.88.6.3" || len(s.Processes) != 2*len(labEchoApps) || !s.Intercept {
		t.Fatalf("state %+v", s)
	}
	code, out, errs := runCapture("lab", "status", "--name", name)
	if code != 0 || strings.Count(out, "running") != len(s.Processes) || !strings.Contains(out, "sidecars: none, so TCP") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errs)
	}
	rules, err := exec.Command("ip", "netns", "exec", s.Pods[0].NS, "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil || !strings.Contains(string(rules), "--uid-owner 2002") {
		t.Fatalf("pod a's nat rules (%v):\n%s", err, rules)
	}
	if code, out, errs := runCapture("lab", "down", "--name", name); code != 0 || !strings.Contains(out, "is down") {
		t.Fatalf("down: exit %d\n%s%s", code, out, errs)
	}
	select {
	case <-exited.done:
		if exited.err != nil {
			t.Errorf("lab up ended with %v", exited.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("lab up still runs after down returned")
	}
	labGone(t, s)
	if code, out, _ := runCapture("lab", "down", "--name", name); code != 0 || !strings.Contains(out, "is not up") {
		t.Errorf("a second down: exit %d, %q", code, out)
	}
}

// A lab whose process was killed is cleaned up by down.
func TestLabDownAfterKill(t *testing.T) {
	name := fmt.Sprintf("k%d", os.Getpid())
	cmd, s, exited := labUp(t, name, "--pods", "1", "--subnet", "10.88.7.0/24")
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited.done
	if code, _, errs := runCapture("lab", "status", "--name", name); code != 1 || !strings.Contains(errs, "is gone") {
		t.Errorf("status of a killed lab: exit %d, %q", code, errs)
	}
	if code, out, errs := runCapture("lab", "down", "--name", name); code != 0 {
		t.Fatalf("down: exit %d\n%s%s", code, out, errs)
	}
	labGone(t, s)
}
