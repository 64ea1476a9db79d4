package meshtest

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	"github.com/quicmesh/quicmesh/internal/echo"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

// Proto is what an HTTP app speaks.
type Proto int

const (
	H1    Proto = 1 << iota // HTTP/1.1
	H2C                     // cleartext HTTP/2 with prior knowledge
	H1H2C = H1 | H2C
)

// App is a running app of the mesh: an address and what reached it.
type App struct {
	Name string
	Addr string
	// Hits counts requests (HTTP apps), calls (gRPC) or accepted
	// connections (TCP apps).
	Hits atomic.Int64
	// Bytes counts what the TCP echo app echoed, once each connection
	// ended.
	Bytes atomic.Int64
}

// URL is the route to the app with scheme (tcp, http, h2c), or the bare
// address (protocol detected) for "".
func (a *App) URL(scheme string) string {
	if scheme == "" {
		return a.Addr
	}
	return scheme + "://" + a.Addr
}

// App is the app started as name.
func (m *Mesh) App(name string) *App {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.apps[name]
	if !ok {
		m.t.Fatalf("meshtest: no app %q", name)
	}
	return a
}

func (m *Mesh) addApp(name string, ln net.Listener) *App {
	a := &App{Name: name, Addr: ln.Addr().String()}
	m.mu.Lock()
	m.apps[name] = a
	m.mu.Unlock()
	return a
}

// HTTPApp serves h (nil: the echo app, echo.Handler) speaking proto, and
// counts its requests.
func (m *Mesh) HTTPApp(name string, proto Proto, h http.Handler) *App {
	m.t.Helper()
	ln := testkit.Listen(m.t)
	a := m.addApp(name, ln)
	if h == nil {
		h = echo.Handler()
	}
	var p http.Protocols
	p.SetHTTP1(proto&H1 != 0)
	p.SetUnencryptedHTTP2(proto&H2C != 0)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.Hits.Add(1)
		h.ServeHTTP(w, r)
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	m.t.Cleanup(func() { srv.Close(); <-done })
	return a
}

// GRPCApp is the gRPC echo app (echo.StartGRPC), counting its calls;
// opts come after the counting interceptors (e.g. one that fails calls).
func (m *Mesh) GRPCApp(name string, opts ...grpc.ServerOption) *App {
	m.t.Helper()
	ln := testkit.Listen(m.t)
	a := m.addApp(name, ln)
	srv := echo.StartGRPC(ln, append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			a.Hits.Add(1)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			a.Hits.Add(1)
			return h(srv, ss)
		})}, opts...)...)
	m.t.Cleanup(func() { srv.Close() })
	return a
}

// TCPApp serves every accepted connection with serve (nil: an echo that
// half-closes after the client did), counting connections in Hits and,
// for the echo, bytes in Bytes.
func (m *Mesh) TCPApp(name string, serve func(net.Conn)) *App {
	m.t.Helper()
	ln := testkit.Listen(m.t)
	a := m.addApp(name, ln)
	if serve == nil {
		serve = func(c net.Conn) {
			n, _ := io.Copy(c, c)
			a.Bytes.Add(n)
			c.(*net.TCPConn).CloseWrite()
		}
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.Hits.Add(1)
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				serve(c)
			}()
		}
	}()
	// The sidecars are closed first (cleanups run last-in first-out);
	// a connection still open then would otherwise hold the test.
	m.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return a
}

// DownApp is an address where nothing listens: an app that is down.
func (m *Mesh) DownApp(name string) *App {
	m.t.Helper()
	ln := testkit.Listen(m.t)
	a := m.addApp(name, ln)
	ln.Close()
	return a
}
