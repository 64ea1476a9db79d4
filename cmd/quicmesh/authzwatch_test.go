package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
)

// A running sidecar's config file is edited: each valid edit of
// inbound.authorization is put in force, each broken one (not JSON, an
// unknown caller, a route not served) is logged as an error and changes
// nothing, and an edit of another key is logged as needing a restart.
// The flag --default-inbound-policy keeps winning over the file's
// default. The setter is a real inbound server: it checks routes too.
func TestWatchAuthorization(t *testing.T) {
	web := identity.MustParseID("spiffe://test.local/web")
	batch := identity.MustParseID("spiffe://test.local/batch")
	const routes = `"routes": {"api": "127.0.0.1:1", "db": "tcp://127.0.0.1:2"}`
	conf := func(auth string) string {
		return `{"inbound": {` + routes + `, "authorization": ` + auth + `}}`
	}
	path := filepath.Join(t.TempDir(), "quicmesh.json")
	write := func(s string) {
		t.Helper()
		// Rename into place, as editors and config managers do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	initial := conf(`{"routes": {"api": ["spiffe://test.local/web"]}}`)
	write(initial)

	c, f := newProxyCommand(io.Discard, io.Discard)
	if _, ok := c.Parse([]string{"--default-inbound-policy", "deny"}); !ok {
		t.Fatal("flags do not parse")
	}
	set := setFlags(c.Flags)
	fc, err := loadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rts := inbound.Routes{"api": "127.0.0.1:1", "db": "tcp://127.0.0.1:2"}
	start, err := authorization(fc, f, set, rts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := inbound.New(inbound.Config{Options: inbound.Options{Routes: rts, Authorization: start}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var logs testkit.LogBuffer
	w, err := watchAuthorization(path, fc, f, set, rts, srv, logs.Logger(slog.LevelInfo), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if srv.Authorization() != start {
		t.Fatal("the first load replaced the policy the sidecar started with")
	}

	type check struct {
		route string
		peer  identity.ID
		allow bool
		path  string // a GET of path (DecideHTTP), "" for the route's rule
	}
	steps := []struct {
		name    string
		file    string
		wantErr string  // logged once as "config reload failed", and returned
		checks  []check // under the policy in force after the step
		restart bool    // a "needs a restart" warning is logged
	}{
		{"as started: the file's rule, the flag's default", initial, "",
			[]check{{"api", web, true, ""}, {"api", batch, false, ""}, {"db", web, false, ""}}, false},
		{"a new rule for api", conf(`{"routes": {"api": ["spiffe://test.local/batch"], "db": ["all-authenticated"]}}`), "",
			[]check{{"api", web, false, ""}, {"api", batch, true, ""}, {"db", web, true, ""}}, false},
		{"a half-written file", `{"inbound": {`, "unexpected EOF",
			[]check{{"api", batch, true, ""}, {"db", web, true, ""}}, false},
		{"an unknown caller", conf(`{"routes": {"api": ["everyone"]}}`), `unknown caller "everyone"`,
			[]check{{"api", batch, true, ""}}, false},
		{"a route not served", conf(`{"default": "unauthenticated", "routes": {"apj": ["deny"]}}`), `"inbound.authorization.routes.apj": no such inbound route`,
			[]check{{"api", batch, true, ""}, {"api", identity.ID{}, false, ""}}, false},
		{"a file default the flag overrides", conf(`{"default": "unauthenticated"}`), "",
			[]check{{"api", web, false, ""}, {"api", identity.ID{}, false, ""}, {"db", batch, false, ""}}, false},
		{"HTTP rules for api", conf(`{"routes": {"api": ["spiffe://test.local/*"]}, "http_routes": {"api": [{"path_prefix": "/admin", "allow": ["spiffe://test.local/web"]}]}}`), "",
			[]check{{"api", batch, true, ""}, {"api", batch, true, "/shop"}, {"api", batch, false, "/admin/x"}, {"api", web, true, "/admin/x"}}, false},
		{"HTTP rules for the tcp route", conf(`{"http_routes": {"db": [{"path": "/", "allow": ["deny"]}]}}`), "a tcp:// route carries no HTTP requests",
			[]check{{"api", batch, false, "/admin/x"}, {"api", web, true, "/admin/x"}}, false},
		{"another key changed too", `{"inbound": {` + routes + `, "listen": "127.0.0.1:9"}}`, "",
			[]check{{"api", web, false, ""}}, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			failedBefore := len(logs.Lines("config reload failed: keeping the authorization policy in force"))
			restartBefore := logs.Count("only the authorization policy is applied without a restart")
			write(st.file)
			err := w.Check(true)
			if st.wantErr == "" && err != nil {
				t.Fatalf("reload: %v", err)
			}
			if st.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), st.wantErr) {
					t.Fatalf("reload error %v, want %q", err, st.wantErr)
				}
				lines := logs.Lines("config reload failed: keeping the authorization policy in force")
				if len(lines) != failedBefore+1 || !strings.Contains(lines[len(lines)-1], "level=ERROR") {
					t.Fatalf("want one more error line for the failed reload; logs:\n%s", logs.String())
				}
			}
			for _, c := range st.checks {
				d := srv.Authorization().Decide(c.route, c.peer)
				if c.path != "" {
					d = srv.Authorization().DecideHTTP(c.route, "GET", c.path, "", c.peer)
				}
				if d.Allow != c.allow {
					t.Errorf("%s %s from %q: %+v, want allow %v", c.route, c.path, c.peer, d, c.allow)
				}
			}
			if got := logs.Count("only the authorization policy is applied without a restart") > restartBefore; got != st.restart {
				t.Errorf("restart warning logged: %v, want %v", got, st.restart)
			}
		})
	}

	// Polling: a watcher with an interval finds an edit by itself.
	write(initial)
	pw, err := watchAuthorization(path, fc, f, set, rts, srv, slog.New(slog.DiscardHandler), 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	write(conf(`{"routes": {"api": ["spiffe://test.local/*"]}}`))
	testkit.Eventually(t, "the polled edit in force", func() bool {
		return srv.Authorization().Decide("api", batch).Reason == authz.ReasonTrustDomain
	})
}
