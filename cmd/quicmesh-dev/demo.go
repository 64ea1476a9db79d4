package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/echo"
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
	c := cli.New("quicmesh-dev demo", `Usage: quicmesh-dev demo [-v] [--timeout D]

Runs a whole mesh on loopback — its own CA, two sidecars, echo apps for
TCP, HTTP/1.1, h2c and gRPC — checks that traffic of every kind crosses
it intact, and exits 0 if every check passed.
`, stdout, stderr)
	verbose := c.Flags.Bool("v", false, "log sidecar activity to stderr")
	timeout := c.Flags.Duration("timeout", time.Minute, "how long each check may take before it fails")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	if *timeout <= 0 {
		return c.Fail("--timeout %s: must be positive", *timeout)
	}
	fail := func(format string, a ...any) int { return c.Fail(format, a...) }
	logLevel := slog.LevelError
	if *verbose {
		logLevel = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	start := time.Now()
	fmt.Fprintln(stdout, "quicmesh-dev demo: a whole mesh on loopback with its own CA")
	ca, err := identity.NewCA(demoTrustDomain, time.Hour)
	if err != nil {
		return fail("creating CA: %v", err)
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
			return fail("starting %s app: %v", a.name, err)
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
		return fail("issuing server identity: %v", err)
	}
	m.server, err = sidecar.Start(sidecar.Deps{
		Identity: serverProv,
		Resolver: static.NewFromMap(nil),
		Logger:   logger.With("sidecar", "server"),
	}, sidecar.Options{
		InboundAddr: "127.0.0.1:0",
		Inbound: inbound.Options{Routes: inbound.Routes{
			"echo-tcp":   "tcp://" + tcpApp.Addr().String(),
			"echo-http1": "http://" + apps["echo-http1"].Addr().String(),
			"echo-h2c":   "h2c://" + apps["echo-h2c"].Addr().String(),
			"echo-grpc":  "h2c://" + apps["echo-grpc"].Addr().String(),
		}},
	})
	if err != nil {
		return fail("starting server sidecar: %v", err)
	}
	m.closers = append(m.closers, func() { m.server.Close() })

	clientProv, err := newProvider(demoClientID)
	if err != nil {
		return fail("issuing client identity: %v", err)
	}
	services := []string{"echo-tcp", "echo-http1", "echo-h2c", "echo-grpc"}
	eps := map[string][]discovery.Endpoint{}
	var binds []sidecar.Bind
	for _, svc := range services {
		eps[svc] = []discovery.Endpoint{{Addr: m.server.InboundAddr().String(), Identity: demoServerID}}
		binds = append(binds, sidecar.Bind{Name: svc, Listen: "127.0.0.1:0", Service: svc})
	}
	m.resolver = static.NewFromMap(eps)
	m.closers = append(m.closers, func() { m.resolver.Close() })
	m.client, err = sidecar.Start(sidecar.Deps{
		Identity: clientProv,
		Resolver: m.resolver,
		Logger:   logger.With("sidecar", "client"),
	}, sidecar.Options{
		InboundAddr: "127.0.0.1:0",
		Listeners:   sidecar.Listeners{Binds: binds},
	})
	if err != nil {
		return fail("starting client sidecar: %v", err)
	}
	m.closers = append(m.closers, func() { m.client.Close() })

	tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "  CA\ttrust domain %s\n", demoTrustDomain)
	fmt.Fprintf(tw, "  sidecar client\t%s\n", demoClientID)
	for _, svc := range services {
		fmt.Fprintf(tw, "\toutbound %s -> %s\n", m.client.ListenerAddr(svc), svc)
	}
	fmt.Fprintf(tw, "  sidecar server\t%s\n", demoServerID)
	fmt.Fprintf(tw, "\tinbound quic %s -> apps %s\n", m.server.InboundAddr(), strings.Join(services, ", "))
	tw.Flush()
	fmt.Fprintln(stdout)

	bind := m.client.ListenerAddr("echo-tcp").String()
	h1URL := "http://" + m.client.ListenerAddr("echo-http1").String()
	h2URL := "http://" + m.client.ListenerAddr("echo-h2c").String()
	grpcAddr := m.client.ListenerAddr("echo-grpc").String()
	checks := []demoCheck{
		{"tcp: 1 KiB echo", func(ctx context.Context) (string, error) { return tcpTransfer(ctx, bind, 1<<10) }},
		{"tcp: 16 MiB each way", func(ctx context.Context) (string, error) { return tcpTransfer(ctx, bind, 16<<20) }},
		{"tcp: 50 concurrent connections", func(ctx context.Context) (string, error) { return tcpConcurrent(ctx, bind, 50, 64<<10) }},
		{"tcp: half-close", func(ctx context.Context) (string, error) { return tcpHalfClose(ctx, bind) }},
		{"http/1.1: GET", func(ctx context.Context) (string, error) { return httpGet(ctx, h1Client(), h1URL, "HTTP/1.1") }},
		{"http/1.1: 8 MiB POST echo", func(ctx context.Context) (string, error) { return httpPost(ctx, h1Client(), h1URL, 8<<20) }},
		{"h2c: GET", func(ctx context.Context) (string, error) { return httpGet(ctx, h2cClient(), h2URL, "HTTP/2.0") }},
		{"h2c: 8 MiB POST echo", func(ctx context.Context) (string, error) { return httpPost(ctx, h2cClient(), h2URL, 8<<20) }},
		{"grpc: unary", func(ctx context.Context) (string, error) { return grpcUnary(ctx, grpcAddr) }},
		{"grpc: bidi streaming", func(ctx context.Context) (string, error) { return grpcBidi(ctx, grpcAddr, 100) }},
		{"shared QUIC connections", func(context.Context) (string, error) {
			if n := m.client.Pool().Len(); n != 1 {
				return "", fmt.Errorf("client holds %d QUIC connections to its one peer, want 1", n)
			}
			return "1 mTLS QUIC connection carried all of it", nil
		}},
	}
	failed := runChecks(stdout, checks, *timeout)

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
func tcpTransfer(ctx context.Context, addr string, size int) (string, error) {
	c, err := dialCheck(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
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
	return fmt.Sprintf("%s byte-identical%s", byteSize(size), throughput(size, time.Since(t0))), nil
}

func tcpConcurrent(ctx context.Context, addr string, n, size int) (string, error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tcpTransfer(ctx, addr, size); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return "", err
	}
	return fmt.Sprintf("%d x %s byte-identical", n, byteSize(size)), nil
}

func tcpHalfClose(ctx context.Context, addr string) (string, error) {
	c, err := dialCheck(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
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

// dialCheck connects to addr for a check; the connection's deadline is
// the check's.
func dialCheck(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	return c, nil
}

// demoCheck is one line of the demo's report.
type demoCheck struct {
	name string
	run  func(ctx context.Context) (detail string, err error)
}

// runChecks runs the checks in order, each within timeout, printing each
// result as soon as it is known, in aligned columns: status, name, time,
// detail (last, as it has no bounded width). It returns how many failed.
func runChecks(w io.Writer, checks []demoCheck, timeout time.Duration) (failed int) {
	nameWidth := 0
	for _, c := range checks {
		nameWidth = max(nameWidth, len(c.name))
	}
	for _, c := range checks {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		detail, err := c.run(ctx)
		cancel()
		status := "ok"
		if err != nil {
			failed++
			status, detail = "FAIL", err.Error()
		}
		fmt.Fprintf(w, "  %-4s  %-*s  %7s  %s\n", status, nameWidth, c.name, elapsed(time.Since(t0)), detail)
	}
	return failed
}

// elapsed formats a check's duration in at most 7 ASCII characters.
func elapsed(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return "<1ms"
	case d < 10*time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	default:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
}

// minTimedBytes is the smallest transfer whose duration says something
// about throughput; below it, connection set-up and scheduling dominate.
const minTimedBytes = 1 << 20

// throughput is ", N Mbit/s each way" for a transfer of size bytes each
// way, or "" for one too small to time.
func throughput(size int, d time.Duration) string {
	if size < minTimedBytes || d <= 0 {
		return ""
	}
	return fmt.Sprintf(", %.0f Mbit/s each way", float64(size)*8/d.Seconds()/1e6)
}

// byteSize formats n as KiB or MiB when it is a whole number of them.
func byteSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}
