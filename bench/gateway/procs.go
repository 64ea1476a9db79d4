package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/quicmesh/quicmesh/bench/scenario"
)

// proc is one process the bench started; its output goes to a log file
// in the work directory, whose tail is shown when it fails.
type proc struct {
	name string
	*scenario.Process
}

func startProc(dir, name string, argv ...string) (*proc, error) {
	p, err := scenario.StartProcess(name, filepath.Join(dir, name+".log"), argv...)
	if err != nil {
		return nil, err
	}
	return &proc{name, p}, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// failure describes a process that is not running as it should: its exit
// and the end of its log.
func (p *proc) failure(err error) error {
	if p.exited() {
		return fmt.Errorf("%s exited (%v): %w; end of its log:\n%s", p.name, p.Err(), err, p.Tail(2000))
	}
	return fmt.Errorf("%s: %w; end of its log:\n%s", p.name, err, p.Tail(2000))
}

// waitFor polls check until it succeeds, the process exits or timeout
// passes (the processes start on a loaded machine: seconds, not
// milliseconds).
func (p *proc) waitFor(ctx context.Context, timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return p.failure(fmt.Errorf("waiting for %s: %w", what, err))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return p.failure(fmt.Errorf("%s not within %s: %w", what, timeout, err))
		}
	}
}

// getOK is one GET that must answer 200.
func getOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s (%s)", url, resp.Status, resp.Header.Get("Quicmesh-Proxy-Error"))
	}
	return nil
}

// freeAddr finds a 127.0.0.1 port free for both TCP and UDP (a sidecar's
// inbound may serve both on one number). Another process may take it
// before ours binds it; that process's start then fails, visibly.
func freeAddr() (string, error) {
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		ln.Close()
		if err == nil {
			u.Close()
			return fmt.Sprintf("127.0.0.1:%d", port), nil
		}
	}
	return "", errors.New("no port free for both TCP and UDP after 20 tries")
}
