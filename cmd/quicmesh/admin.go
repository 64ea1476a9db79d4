package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminOptions configures the admin server. The zero value serves only
// /live, /ready and /debug/pprof/.
type adminOptions struct {
	// Registry is served on /metrics; nil answers /metrics with 404.
	Registry *prometheus.Registry
	// LogLevel is read and set by /log-level; nil answers it with 404.
	LogLevel *slog.LevelVar
	// AllowShutdown enables POST /shutdown, which then calls Shutdown
	// (once, in its own goroutine). Off, the endpoint answers 403.
	AllowShutdown bool
	Shutdown      func()
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// adminServer serves the operator endpoints, normally on a loopback
// address (the caller chooses it):
//
//	GET  /live            200 while the process serves HTTP
//	GET  /ready           200 after SetReady(true), 503 before and while draining
//	GET  /metrics         Prometheus exposition of Registry
//	GET  /log-level       the current level: debug, info, warn or error
//	PUT  /log-level       body debug|info|warn|error sets it (400 otherwise)
//	POST /shutdown        202 and calls Shutdown if AllowShutdown, else 403
//	     /debug/pprof/... net/http/pprof (index, cmdline, profile, symbol, trace, named profiles)
//
// Requests with a method an endpoint does not serve get 405. State-changing
// requests coming from a web page of another origin are refused (403) so
// a browser on the same host cannot be used to reach them.
type adminServer struct {
	srv          *http.Server
	ln           net.Listener
	log          *slog.Logger
	opts         adminOptions
	ready        atomic.Bool
	shutdownOnce sync.Once
}

// startAdmin serves /live, /ready and /debug/pprof/ on addr.
func startAdmin(addr string, log *slog.Logger) (*adminServer, error) {
	return startAdminWith(addr, adminOptions{Logger: log})
}

// startAdminWith listens on addr and serves the admin endpoints in the
// background until Close.
func startAdminWith(addr string, opts adminOptions) (*adminServer, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	a := &adminServer{ln: ln, log: opts.Logger, opts: opts}
	a.srv = &http.Server{
		Handler:           http.NewCrossOriginProtection().Handler(a.routes()),
		ReadHeaderTimeout: 5 * time.Second,
		// No WriteTimeout: /debug/pprof/profile and /trace stream for
		// as long as the caller asks (?seconds=N).
		IdleTimeout: time.Minute,
		ErrorLog:    slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin server stopped", "error", err)
		}
	}()
	return a, nil
}

func (a *adminServer) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "live") })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})

	if reg := a.opts.Registry; reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(a.log.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError, // serve what could be gathered
			Registry:      reg,                      // promhttp_metric_handler_errors_total
		}))
	} else {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "metrics are not enabled on this admin server", http.StatusNotFound)
		})
	}

	mux.HandleFunc("GET /log-level", a.getLogLevel)
	mux.HandleFunc("PUT /log-level", a.putLogLevel)
	mux.HandleFunc("POST /shutdown", a.shutdown)

	// pprof on this mux only; nothing is served from DefaultServeMux.
	mux.HandleFunc("/debug/pprof/", pprof.Index) // also the named profiles: heap, goroutine, ...
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// logLevels are the names /log-level accepts and reports.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func levelName(l slog.Level) string { return strings.ToLower(l.String()) } // "info", or "info+2" for odd levels

func (a *adminServer) getLogLevel(w http.ResponseWriter, r *http.Request) {
	if a.opts.LogLevel == nil {
		http.Error(w, "the log level is not adjustable on this admin server", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, levelName(a.opts.LogLevel.Level()))
}

func (a *adminServer) putLogLevel(w http.ResponseWriter, r *http.Request) {
	if a.opts.LogLevel == nil {
		http.Error(w, "the log level is not adjustable on this admin server", http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64))
	if err != nil {
		http.Error(w, "body too large: want one of debug, info, warn, error", http.StatusBadRequest)
		return
	}
	name := strings.ToLower(strings.TrimSpace(string(body)))
	level, ok := logLevels[name]
	if !ok {
		http.Error(w, fmt.Sprintf("bad log level %q: want one of debug, info, warn, error", name), http.StatusBadRequest)
		return
	}
	old := a.opts.LogLevel.Level()
	a.opts.LogLevel.Set(level)
	a.log.Info("log level changed", "from", levelName(old), "to", name, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, name)
}

func (a *adminServer) shutdown(w http.ResponseWriter, r *http.Request) {
	if !a.opts.AllowShutdown {
		http.Error(w, "shutdown via the admin server is disabled on this sidecar", http.StatusForbidden)
		return
	}
	if a.opts.Shutdown == nil {
		http.Error(w, "shutdown is enabled but not wired to anything", http.StatusNotImplemented)
		return
	}
	first := false
	a.shutdownOnce.Do(func() {
		first = true
		a.log.Info("shutdown requested via the admin server", "remote", r.RemoteAddr)
		// In its own goroutine: Shutdown may Close this server, which
		// waits for this very request to finish.
		go a.opts.Shutdown()
	})
	w.WriteHeader(http.StatusAccepted)
	if first {
		fmt.Fprintln(w, "shutting down")
	} else {
		fmt.Fprintln(w, "already shutting down")
	}
}

func (a *adminServer) SetReady(v bool) { a.ready.Store(v) }
func (a *adminServer) Addr() net.Addr  { return a.ln.Addr() }

// Close stops the server, giving in-flight requests a second to finish
// before their connections are closed.
func (a *adminServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := a.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return a.srv.Close()
	}
	return err
}
