package main

import (
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"github.com/quicmesh/quicmesh/internal/filewatch"
	"github.com/quicmesh/quicmesh/proxy/authz"
	"github.com/quicmesh/quicmesh/proxy/inbound"
)

// configPollInterval is how often a running sidecar looks at its config
// file for a new authorization policy: a stat per interval, a read only
// when the file changed (internal/filewatch).
const configPollInterval = time.Second

// policySetter is what the watcher changes: the running sidecar.
type policySetter interface {
	SetAuthorization(*authz.Policy) error
	Authorization() *authz.Policy
}

// authzWatch re-reads the config file when it changes and puts its
// inbound.authorization in force without a restart. Every other key
// needs a restart: a change to one is logged, not applied. A file that
// does not parse, or a policy that does not (or names a route the
// sidecar does not serve), keeps the policy in force and is logged as an
// error: a broken edit never opens anything up.
type authzWatch struct {
	path   string
	flags  *proxyFlags
	set    map[string]bool
	routes inbound.Routes
	sc     policySetter
	log    *slog.Logger
	// started is the file as the sidecar started with it, authorization
	// left out, to tell an operator that other changes wait for a
	// restart.
	started fileConfig
}

// watchAuthorization starts watching path (polling every interval; 0:
// only when Check is called). The first load only compares: the sidecar
// already runs with the file's policy.
func watchAuthorization(path string, started *fileConfig, f *proxyFlags, set map[string]bool, routes inbound.Routes, sc policySetter, log *slog.Logger, interval time.Duration) (*filewatch.Watcher, error) {
	w := &authzWatch{path: path, flags: f, set: set, routes: routes, sc: sc, log: log, started: withoutAuthorization(started)}
	fw, err := filewatch.New(filewatch.Options{
		Paths:    []string{path},
		Interval: interval,
		MaxSize:  maxConfigBytes,
		Load:     w.load,
		Failed: func(err error) {
			log.Error("config reload failed: keeping the authorization policy in force", "config", path, "error", err)
		},
		Recovered: func() {
			log.Info("config file is valid again", "config", path)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watching config %s: %w", path, err)
	}
	return fw, nil
}

func (w *authzWatch) load(contents [][]byte) error {
	fc, err := parseConfig(contents[0], w.path)
	if err != nil {
		return err
	}
	p, err := authorization(fc, w.flags, w.set, w.routes)
	if err != nil {
		return fmt.Errorf("config %s: %w", w.path, err)
	}
	if !reflect.DeepEqual(withoutAuthorization(fc), w.started) {
		w.log.Warn("config file changed beyond inbound.authorization: only the authorization policy is applied without a restart", "config", w.path)
	}
	if reflect.DeepEqual(p.Spec(), w.sc.Authorization().Spec()) {
		return nil
	}
	if err := w.sc.SetAuthorization(p); err != nil {
		return fmt.Errorf("config %s: %w", w.path, err)
	}
	w.log.Info("authorization policy reloaded", "config", w.path, "policy", p.String())
	return nil
}

// withoutAuthorization is fc with its authorization left out, to compare
// the rest.
func withoutAuthorization(fc *fileConfig) fileConfig {
	c := *fc
	c.Inbound.Authorization = nil
	return c
}
