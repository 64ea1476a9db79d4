package scenario

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Process management: every process the runner starts goes through a
// supervisor, which stops them all, newest first, when the run ends.

// proc is a process the runner started and must stop.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

// supervisor starts processes with their output in logDir/NAME.log and
// keeps track of those still to stop. Not safe for concurrent use: the
// runner starts and stops processes from one goroutine.
type supervisor struct {
	logDir string
	live   []*proc
}

// start starts argv as name (in network namespace ns if not empty).
func (s *supervisor) start(name, ns string, env []string, argv ...string) (*proc, error) {
	p, err := startProc(name, ns, filepath.Join(s.logDir, name+".log"), env, argv...)
	if err != nil {
		return nil, err
	}
	s.live = append(s.live, p)
	return p, nil
}

// stop stops ps, the last one first (outbound sidecars before the inbound
// ones they talk to), and forgets every process that has exited.
func (s *supervisor) stop(ps []*proc) {
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop(stopGrace)
	}
	keep := s.live[:0]
	for _, p := range s.live {
		if p.alive() {
			keep = append(keep, p)
		}
	}
	s.live = keep
}

// stopAll stops every process still running.
func (s *supervisor) stopAll() { s.stop(s.live) }

// stopGrace is how long a process has to exit after SIGTERM.
const stopGrace = 3 * time.Second

// startProc starts argv (inside network namespace ns if not empty) with its
// output in logPath. The process gets its own process group and dies with
// the runner (SIGKILL on parent death).
func startProc(name, ns, logPath string, env []string, argv ...string) (*proc, error) {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID ("ip netns exec" execs the command, so it is the
// proxy's own).
func (p *proc) PID() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if !p.alive() {
		return
	}
	pid := p.PID()
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// tail returns the last n bytes of the process's log.
func (p *proc) tail(n int) string { return tailFile(p.log, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// waitTCP waits until addr accepts TCP connections (host network
// namespace only) or the process exits.
func waitTCP(ctx context.Context, addr string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && !p.alive() {
			return fmt.Errorf("%s exited: %s", p.name, p.tail(400))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %s: %v", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// shellQuote renders argv as a shell command line.
func shellQuote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" {
			out[i] = "''"
			continue
		}
		safe := true
		for _, r := range a {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r)) {
				safe = false
				break
			}
		}
		if safe {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// Process is a process started by StartProcess: the runner's process
// handling (own process group, killed with the parent, output in a log
// file) for the bench's other commands (bench/gateway).
type Process struct{ p *proc }

// StartProcess starts argv as name with its output in logPath.
func StartProcess(name, logPath string, argv ...string) (*Process, error) {
	p, err := startProc(name, "", logPath, nil, argv...)
	if err != nil {
		return nil, err
	}
	return &Process{p}, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.p.PID() }

// Done is closed when the process has exited; Err is then its exit.
func (p *Process) Done() <-chan struct{} { return p.p.done }

// Err is the process's exit status, once Done is closed.
func (p *Process) Err() error { return p.p.err }

// Stop sends SIGTERM to the process group, then SIGKILL after a grace of
// a few seconds, and waits for the exit.
func (p *Process) Stop() { p.p.stop(stopGrace) }

// Tail is the last n bytes of the process's log.
func (p *Process) Tail(n int) string { return p.p.tail(n) }
