package scenario

import (
	"errors"
	"fmt"
	"net"
)

// portAlloc hands out listen addresses: free ports of the host's loopback,
// and counted ports inside the runner's own network namespaces, where
// nothing else listens.
type portAlloc struct {
	nsPort int // last port handed out in a namespace
}

func newPortAlloc() *portAlloc { return &portAlloc{nsPort: 20000} }

// addr returns a free host:port on host, in network namespace ns ("" =
// the host's).
func (a *portAlloc) addr(ns, host string) (string, error) {
	if ns == "" {
		p, err := freePort()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s:%d", host, p), nil
	}
	a.nsPort++
	return fmt.Sprintf("%s:%d", host, a.nsPort), nil
}

// freePort returns a port on 127.0.0.1 that is free for both TCP and UDP
// right now.
func freePort() (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port, nil
	}
	return 0, errors.New("no free port for TCP and UDP")
}

// freeAddr is a free 127.0.0.1:port (see freePort).
func freeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}
