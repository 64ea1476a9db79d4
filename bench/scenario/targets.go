package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/quicmesh/quicmesh/bench"
)

// topology says where the two sides of a pair live.
type topology struct {
	clientNS, serverNS string
	clientIP, serverIP string
	apps               map[string]string // echo apps, as the server side reaches them
}

// loopback is the topology of the loopback loads: everything on the
// host's 127.0.0.1.
func loopback(apps map[string]string) topology {
	return topology{clientIP: "127.0.0.1", serverIP: "127.0.0.1", apps: apps}
}

// liveTarget is a started target.
type liveTarget struct {
	name   string
	front  string // where the load generator connects
	ns     string // the load generator's namespace
	procs  []*proc
	sample []bench.Proc // the proxy processes the load generator samples
}

// launcher starts targets: nothing for Direct, a sidecar pair (pairKinds)
// for the others.
type launcher struct {
	opt   *Options // the peers' binaries; the runner clears one to skip it
	sup   *supervisor
	ports *portAlloc
	work  workDir
	certs PeerCerts
	mesh  quicmeshCerts
}

// available reports whether target can carry app, and why not.
func (ln *launcher) available(target, app string) (bool, string) {
	k, ok := pairKinds[target]
	switch {
	case !ok:
		return true, "" // Direct; an unknown target fails in start
	case k.Bin(ln.opt) == "":
		return false, k.Missing
	case app == "tcp" && k.HTTPOnly != "":
		return false, k.HTTPOnly
	}
	return true, ""
}

// start starts target for app kind app in topology t; tag names its
// processes and files. On loopback it returns once the front accepts
// connections.
func (ln *launcher) start(ctx context.Context, target, app string, t topology, tag string) (*liveTarget, error) {
	if target == Direct {
		return &liveTarget{name: Direct, front: t.apps[app], ns: t.clientNS}, nil
	}
	k, ok := pairKinds[target]
	if !ok {
		return nil, fmt.Errorf("unknown target %q", target)
	}
	return ln.startPair(ctx, target, k, app, t, tag)
}

// startPair starts the pair of kind k, B before A.
func (ln *launcher) startPair(ctx context.Context, target string, k pairKind, app string, t topology, tag string) (*liveTarget, error) {
	lt := &liveTarget{name: target, ns: t.clientNS}
	fail := func(err error) (*liveTarget, error) {
		ln.sup.stop(lt.procs)
		return nil, err
	}
	s := pairSetup{Pair: Pair{AppAddr: t.apps[app], App: app}, Tag: tag, Bin: k.Bin(ln.opt),
		Certs: ln.certs, Mesh: ln.mesh, Work: ln.work,
		ClientAddr: func() (string, error) { return ln.ports.addr(t.clientNS, t.clientIP) }}
	var err error
	if s.Front, err = ln.ports.addr(t.clientNS, "127.0.0.1"); err != nil {
		return fail(err)
	}
	if s.Peer, err = ln.ports.addr(t.serverNS, t.serverIP); err != nil {
		return fail(err)
	}
	argvB, argvA, err := k.Sides(s)
	if err != nil {
		return fail(err)
	}
	var env []string
	if k.Env != nil {
		env = k.Env(ln.work)
	}
	for _, sd := range []struct {
		name, ns string
		argv     []string
	}{{k.Proc + "-b", t.serverNS, argvB}, {k.Proc + "-a", t.clientNS, argvA}} {
		p, err := ln.sup.start(sd.name+"-"+tag, sd.ns, env, sd.argv...)
		if err != nil {
			return fail(err)
		}
		lt.procs = append(lt.procs, p)
		// A first: the report lists the outbound side first.
		lt.sample = append([]bench.Proc{{Name: sd.name, PID: p.PID()}}, lt.sample...)
	}
	lt.front = s.Front
	if t.clientNS == "" {
		if err := waitTCP(ctx, lt.front, lt.procs[len(lt.procs)-1], 15*time.Second); err != nil {
			return fail(err)
		}
	}
	return lt, nil
}
