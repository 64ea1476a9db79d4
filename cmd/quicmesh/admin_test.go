package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicmesh/quicmesh/internal/telemetry"
)

var quietLog = slog.New(slog.DiscardHandler)

// adminCase is one request against a running admin server. Cases in a
// table run in order, so later ones can observe the effect of earlier ones.
type adminCase struct {
	name       string
	method     string
	path       string
	body       string
	header     map[string]string
	before     func() // runs before the request
	wantStatus int
	wantBody   []string // substrings of the response body
	notBody    []string // must not appear
	after      func(t *testing.T)
}

func startTestAdmin(t *testing.T, opts adminOptions) *adminServer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLog
	}
	a, err := startAdminWith("127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func runAdminCases(t *testing.T, a *adminServer, cases []adminCase) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	base := "http://" + a.Addr().String()
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("%s %s: status %d, want %d (body %q)", method, tc.path, resp.StatusCode, tc.wantStatus, body)
			}
			for _, s := range tc.wantBody {
				if !strings.Contains(string(body), s) {
					t.Errorf("%s %s: body %q does not contain %q", method, tc.path, truncate(body), s)
				}
			}
			for _, s := range tc.notBody {
				if strings.Contains(string(body), s) {
					t.Errorf("%s %s: body %q contains %q", method, tc.path, truncate(body), s)
				}
			}
			if tc.after != nil {
				tc.after(t)
			}
		})
		if !ok {
			return // later cases depend on earlier ones
		}
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

func TestAdminEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := telemetry.New(reg)
	m.RequestStarted(telemetry.Inbound, "echo")
	level := new(slog.LevelVar)
	a := startTestAdmin(t, adminOptions{Registry: reg, LogLevel: level})
	wantLevel := func(l slog.Level) func(*testing.T) {
		return func(t *testing.T) {
			if got := level.Level(); got != l {
				t.Errorf("level = %v, want %v", got, l)
			}
		}
	}

	runAdminCases(t, a, []adminCase{
		{name: "live", path: "/live", wantStatus: 200, wantBody: []string{"live"}},
		{name: "live HEAD", method: http.MethodHead, path: "/live", wantStatus: 200},
		{name: "live POST", method: http.MethodPost, path: "/live", wantStatus: 405},
		{name: "ready before SetReady", path: "/ready", wantStatus: 503, wantBody: []string{"not ready"}},
		{name: "ready", before: func() { a.SetReady(true) }, path: "/ready", wantStatus: 200, wantBody: []string{"ready"}},
		{name: "ready while draining", before: func() { a.SetReady(false) }, path: "/ready", wantStatus: 503},

		{name: "metrics", path: "/metrics", wantStatus: 200, wantBody: []string{
			"# TYPE quicmesh_request_total counter",
			`quicmesh_request_total{direction="inbound",service="echo"} 1`,
		}},
		{name: "metrics POST", method: http.MethodPost, path: "/metrics", wantStatus: 405},

		{name: "log level", path: "/log-level", wantStatus: 200, wantBody: []string{"info\n"}},
		{name: "set debug", method: http.MethodPut, path: "/log-level", body: "debug", wantStatus: 200,
			wantBody: []string{"debug"}, after: wantLevel(slog.LevelDebug)},
		{name: "read back", path: "/log-level", wantStatus: 200, wantBody: []string{"debug\n"}},
		{name: "set WARN with newline", method: http.MethodPut, path: "/log-level", body: " WARN\n", wantStatus: 200,
			after: wantLevel(slog.LevelWarn)},
		{name: "set error", method: http.MethodPut, path: "/log-level", body: "error", wantStatus: 200,
			after: wantLevel(slog.LevelError)},
		{name: "bad level", method: http.MethodPut, path: "/log-level", body: "verbose", wantStatus: 400,
			wantBody: []string{`"verbose"`, "debug, info, warn, error"}, after: wantLevel(slog.LevelError)},
		{name: "slog offset level refused", method: http.MethodPut, path: "/log-level", body: "info+2", wantStatus: 400,
			after: wantLevel(slog.LevelError)},
		{name: "empty level", method: http.MethodPut, path: "/log-level", wantStatus: 400},
		{name: "oversized body", method: http.MethodPut, path: "/log-level", body: strings.Repeat("x", 1000), wantStatus: 400,
			after: wantLevel(slog.LevelError)},
		{name: "set info", method: http.MethodPut, path: "/log-level", body: "info", wantStatus: 200,
			after: wantLevel(slog.LevelInfo)},
		{name: "log level POST", method: http.MethodPost, path: "/log-level", body: "debug", wantStatus: 405,
			after: wantLevel(slog.LevelInfo)},
		{name: "cross-origin PUT refused", method: http.MethodPut, path: "/log-level", body: "debug",
			header:     map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
			wantStatus: 403, after: wantLevel(slog.LevelInfo)},

		{name: "shutdown disabled", method: http.MethodPost, path: "/shutdown", wantStatus: 403,
			wantBody: []string{"disabled"}},
		{name: "shutdown GET", path: "/shutdown", wantStatus: 405},

		{name: "pprof index", path: "/debug/pprof/", wantStatus: 200, wantBody: []string{"goroutine", "heap"}},
		{name: "pprof named profile", path: "/debug/pprof/goroutine?debug=1", wantStatus: 200, wantBody: []string{"goroutine profile"}},
		{name: "pprof cmdline", path: "/debug/pprof/cmdline", wantStatus: 200},
		{name: "pprof symbol", path: "/debug/pprof/symbol", wantStatus: 200, wantBody: []string{"num_symbols"}},
		{name: "pprof unknown profile", path: "/debug/pprof/nope", wantStatus: 404},

		{name: "unknown path", path: "/nope", wantStatus: 404},
	})
}

func TestAdminShutdown(t *testing.T) {
	var calls atomic.Int32
	called := make(chan struct{}, 10)
	a := startTestAdmin(t, adminOptions{AllowShutdown: true, Shutdown: func() {
		calls.Add(1)
		called <- struct{}{}
	}})
	waitCalled := func(t *testing.T) {
		select {
		case <-called:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown not called")
		}
	}
	runAdminCases(t, a, []adminCase{
		{name: "GET", path: "/shutdown", wantStatus: 405},
		{name: "cross-site POST refused", method: http.MethodPost, path: "/shutdown",
			header:     map[string]string{"Sec-Fetch-Site": "cross-site"},
			wantStatus: 403, after: func(t *testing.T) {
				if n := calls.Load(); n != 0 {
					t.Errorf("Shutdown called %d times", n)
				}
			}},
		{name: "POST", method: http.MethodPost, path: "/shutdown", wantStatus: 202,
			wantBody: []string{"shutting down"}, after: waitCalled},
		{name: "POST again", method: http.MethodPost, path: "/shutdown", wantStatus: 202,
			wantBody: []string{"already shutting down"}, after: func(t *testing.T) {
				time.Sleep(10 * time.Millisecond)
				if n := calls.Load(); n != 1 {
					t.Errorf("Shutdown called %d times, want 1", n)
				}
			}},
		{name: "metrics not configured", path: "/metrics", wantStatus: 404, wantBody: []string{"not enabled"}},
		{name: "log level not configured", path: "/log-level", wantStatus: 404},
		{name: "set log level not configured", method: http.MethodPut, path: "/log-level", body: "debug", wantStatus: 404},
	})
}

func TestAdminShutdownNotWired(t *testing.T) {
	a := startTestAdmin(t, adminOptions{AllowShutdown: true})
	runAdminCases(t, a, []adminCase{
		{name: "POST", method: http.MethodPost, path: "/shutdown", wantStatus: 501},
	})
}

// The Shutdown callback typically closes the admin server itself; that
// must not deadlock on the request that triggered it.
func TestAdminShutdownClosesItself(t *testing.T) {
	var a *adminServer
	closed := make(chan error, 1)
	a = startTestAdmin(t, adminOptions{AllowShutdown: true, Shutdown: func() { closed <- a.Close() }})
	runAdminCases(t, a, []adminCase{
		{name: "POST", method: http.MethodPost, path: "/shutdown", wantStatus: 202},
	})
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close from the Shutdown callback did not return")
	}
	if c, err := net.DialTimeout("tcp", a.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("admin still accepting connections after Close")
	}
}

// startAdmin keeps its old behaviour for existing callers.
func TestStartAdminWrapper(t *testing.T) {
	a, err := startAdmin("127.0.0.1:0", quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if ip := a.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Errorf("listening on %v", ip)
	}
	runAdminCases(t, a, []adminCase{
		{name: "live", path: "/live", wantStatus: 200},
		{name: "not ready", path: "/ready", wantStatus: 503},
		{name: "ready", before: func() { a.SetReady(true) }, path: "/ready", wantStatus: 200},
		{name: "no metrics", path: "/metrics", wantStatus: 404},
		{name: "shutdown forbidden", method: http.MethodPost, path: "/shutdown", wantStatus: 403},
		{name: "pprof", path: "/debug/pprof/", wantStatus: 200},
	})
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestAdminListenError(t *testing.T) {
	a := startTestAdmin(t, adminOptions{})
	if b, err := startAdminWith(a.Addr().String(), adminOptions{Logger: quietLog}); err == nil {
		b.Close()
		t.Fatal("second admin on the same address started")
	} else if !strings.Contains(err.Error(), "admin listener") {
		t.Errorf("error %q does not name the admin listener", err)
	}
}
