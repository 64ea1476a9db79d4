package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/bench/echo"
	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
)

// The demo's identities; the trust domain is private to the demo's CA.
const (
	demoTrustDomain = "demo.quicmesh.local"
	demoClientID    = "spiffe://demo.quicmesh.local/ns/demo/sa/client"
	demoServerID    = "spiffe://demo.quicmesh.local/ns/demo/sa/echo"
)

// demoMesh is a whole mesh in one process: a CA, two sidecars and apps.
type demoMesh struct {
	ca             *identity.CA
	client, server *sidecar.Sidecar
	resolver       *static.Resolver
	closers        []func()
}

func (m *demoMesh) Close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quicmesh demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "log sidecar activity to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logLevel := "error"
	if *verbose {
		logLevel = "debug"
	}
	logger, _, _ := newLogger(stderr, logLevel, "text")

	start := time.Now()
	fmt.Fprintln(stdout, "quicmesh demo: a whole mesh on loopback with its own CA")
	ca, err := identity.NewCA(demoTrustDomain, time.Hour)
	if err != nil {
		return fail(stderr, "demo: creating CA: %v", err)
	}
	m := &demoMesh{ca: ca}
	defer m.Close()

	apps := map[string]*echo.Server{}
	for _, a := range []struct {
		name  string
		start func(string) (*echo.Server, error)
	}{
		{"echo-tcp", echo.ListenTCP}, {"echo-http1", echo.ListenHTTP1}, {"echo-h2c", echo.ListenH2C}, {"echo-grpc", func(a string) (*echo.Server, error) { return echo.ListenGRPC(a) }},
	} {
		srv, err := a.start("127.0.0.1:0")
		if err != nil {
			return fail(stderr, "demo: starting %s app: %v", a.name, err)
		}
		m.closers = append(m.closers, func() { srv.Close() })
		apps[a.name] = srv
	}
	tcpApp := apps["echo-tcp"]

	newProvider := func(id string) (identity.Provider, error) {
		p, err := identity.NewCAProvider(ca, identity.MustParseID(id), identity.CAProviderOptions{Lifetime: 10 * time.Minute})
		if err != nil {
			return nil, err
		}
		m.closers = append(m.closers, func() { p.Close() })
		return p, nil
	}
	serverProv, err := newProvider(demoServerID)
	if err != nil {
		return fail(stderr, "demo: issuing server identity: %v", err)
	}
	m.server, err = sidecar.Start(sidecar.Config{
		Identity:    serverProv,
		Resolver:    static.NewFromMap(nil),
		InboundAddr: "127.0.0.1:0",
		Routes: inbound.Routes{
			"echo-tcp":   "tcp://" + tcpApp.Addr().String(),
			"echo-http1": "http://" + apps["echo-http1"].Addr().String(),
			"echo-h2c":   "h2c://" + apps["echo-h2c"].Addr().String(),
			"echo-grpc":  "h2c://" + apps["echo-grpc"].Addr().String(),
		},
		Logger: logger.With("sidecar", "server"),
	})
	if err != nil {
		return fail(stderr, "demo: starting server sidecar: %v", err)
	}
	m.closers = append(m.closers, func() { m.server.Close() })

	clientProv, err := newProvider(demoClientID)
	if err != nil {
		return fail(stderr, "demo: issuing client identity: %v", err)
	}
	services := []string{"echo-tcp", "echo-http1", "echo-h2c", "echo-grpc"}
	eps := map[string][]discovery.Endpoint{}
	var binds []sidecar.Bind
	for _, svc := range services {
		eps[svc] = []discovery.Endpoint{{Addr: m.server.InboundAddr().String(), Identity: demoServerID}}
		binds = append(binds, sidecar.Bind{Listen: "127.0.0.1:0", Service: svc})
	}
	m.resolver = static.NewFromMap(eps)
	m.closers = append(m.closers, func() { m.resolver.Close() })
	m.client, err = sidecar.Start(sidecar.Config{
		Identity:    clientProv,
		Resolver:    m.resolver,
		InboundAddr: "127.0.0.1:0",
		Binds:       binds,
		Logger:      logger.With("sidecar", "client"),
	})
	if err != nil {
		return fail(stderr, "demo: starting client sidecar: %v", err)
	}
	m.closers = append(m.closers, func() { m.client.Close() })

	fmt.Fprintf(stdout, "  CA             trust domain %s\n", demoTrustDomain)
	fmt.Fprintf(stdout, "  sidecar client %s\n", demoClientID)
	for i, svc := range services {
		fmt.Fprintf(stdout, "                 outbound %-15s -> %s\n", m.client.BindAddr(i), svc)
	}
	fmt.Fprintf(stdout, "  sidecar server %s\n                 inbound quic %s -> apps %s\n", demoServerID, m.server.InboundAddr(), strings.Join(services, ", "))
	fmt.Fprintln(stdout)

	failed := 0
	check := func(name string, fn func() (string, error)) {
		t0 := time.Now()
		detail, err := fn()
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "  FAIL  %-34s %v\n", name, err)
			return
		}
		fmt.Fprintf(stdout, "  ok    %-34s %-40s %8s\n", name, detail, time.Since(t0).Round(time.Millisecond))
	}
	bind := m.client.BindAddr(0).String()
	check("tcp: 1 KiB echo", func() (string, error) { return tcpTransfer(bind, 1<<10) })
	check("tcp: 16 MiB each way", func() (string, error) { return tcpTransfer(bind, 16<<20) })
	check("tcp: 50 concurrent connections", func() (string, error) { return tcpConcurrent(bind, 50, 64<<10) })
	check("tcp: half-close", func() (string, error) { return tcpHalfClose(bind) })
	h1URL := "http://" + m.client.BindAddr(1).String()
	check("http/1.1: GET", func() (string, error) { return httpGet(h1Client(), h1URL, "HTTP/1.1") })
	check("http/1.1: 8 MiB POST echo", func() (string, error) { return httpPost(h1Client(), h1URL, 8<<20) })
	h2URL := "http://" + m.client.BindAddr(2).String()
	check("h2c: GET", func() (string, error) { return httpGet(h2cClient(), h2URL, "HTTP/2.0") })
	check("h2c: 8 MiB POST echo", func() (string, error) { return httpPost(h2cClient(), h2URL, 8<<20) })
	grpcAddr := m.client.BindAddr(3).String()
	check("grpc: unary", func() (string, error) { return grpcUnary(grpcAddr) })
	check("grpc: bidi streaming", func() (string, error) { return grpcBidi(grpcAddr, 100) })
	check("shared QUIC connections", func() (string, error) {
		if n := m.client.Pool().Len(); n != 1 {
			return "", fmt.Errorf("client holds %d QUIC connections to its one peer, want 1", n)
		}
		return "1 mTLS QUIC connection carried all of it", nil
	})

	fmt.Fprintln(stdout)
	if failed > 0 {
		fmt.Fprintf(stdout, "demo FAILED: %d check(s) failed (%s)\n", failed, time.Since(start).Round(time.Millisecond))
		return 1
	}
	fmt.Fprintf(stdout, "demo passed: all checks ok (%s)\n", time.Since(start).Round(time.Millisecond))
	return 0
}

// tcpTransfer sends size random bytes through the mesh to the echo app and
// checks that the same bytes come back.
func tcpTransfer(addr string, size int) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(payload)
	t0 := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return "", fmt.Errorf("sending: %w", werr)
	}
	if err != nil {
		return "", fmt.Errorf("receiving: %w", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		return "", fmt.Errorf("echo differs: sent %d bytes, got %d", size, len(got))
	}
	mbps := float64(2*size*8) / time.Since(t0).Seconds() / 1e6
	return fmt.Sprintf("%d bytes byte-identical, %.0f Mbit/s", size, mbps), nil
}

func tcpConcurrent(addr string, n, size int) (string, error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tcpTransfer(addr, size); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return "", err
	}
	return fmt.Sprintf("%d x %d bytes ok", n, size), nil
}

func tcpHalfClose(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if !bytes.Equal(got, []byte("ping")) {
		return "", fmt.Errorf("got %q after closing our write side, want \"ping\"", got)
	}
	return "reply read after client closed its write side", nil
}
