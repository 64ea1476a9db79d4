package scenario

import (
	"context"
	"time"

	"github.com/quicmesh/quicmesh/bench/netlab"
)

// The phases of a run: the loopback loads, the cross-check of the load
// generator against fortio, and the lossy-link loads in network
// namespaces. Each starts its targets, measures them in interleaved
// rounds and stops them.

// startTargets starts every target of l that can carry it; a
// target that is not available is noted, one that fails is noted and
// recorded as a failed run. A target counts as started once it serves
// (loadGen.ready).
func (r *Runner) startTargets(ctx context.Context, l Load, t topology, cond string) []*liveTarget {
	var lts []*liveTarget
	for _, name := range l.Targets {
		if ok, why := r.pairs.available(name, l.App()); !ok {
			r.rec.note("%s: %s skipped: %s.", l.Title, name, why)
			continue
		}
		lt, err := r.pairs.start(ctx, name, l.App(), t, l.ID+"-"+name)
		if err == nil {
			if err = r.gen.ready(ctx, l, lt, false); err != nil {
				r.sup.stop(lt.procs)
			}
		}
		if err != nil {
			r.rec.note("%s: %s failed to start: %v", l.Title, name, err)
			r.rec.addRun(Run{Load: l.ID, Cond: cond, Target: name, Round: 1, Error: err.Error()})
			continue
		}
		lts = append(lts, lt)
	}
	return lts
}

func (r *Runner) stopTargets(lts []*liveTarget) {
	for _, lt := range lts {
		r.sup.stop(lt.procs)
	}
}

// interleave applies l (under condition cond) to every target rounds
// times, rotating the order each round so that no target always runs
// first or after the same neighbour.
func (r *Runner) interleave(ctx context.Context, l Load, cond string, lts []*liveTarget, rounds int) {
	byName := map[string]*liveTarget{}
	var names []string
	for _, lt := range lts {
		byName[lt.name] = lt
		names = append(names, lt.name)
	}
	for round := 1; round <= rounds; round++ {
		for _, n := range Rotate(names, round-1) {
			if ctx.Err() != nil {
				return
			}
			r.rec.addRun(r.gen.bench(ctx, l, cond, byName[n], round))
		}
	}
}

func (r *Runner) loopbackPhase(ctx context.Context, l Load) {
	r.rec.logf("== %s: %s", l.Title, l.Describe())
	lts := r.startTargets(ctx, l, loopback(r.apps), "")
	defer r.stopTargets(lts)
	r.interleave(ctx, l, "", lts, r.opt.Plan.Rounds)
}

// crossCheck runs fortio and quicmesh bench alternately against the direct
// HTTP/1.1 app at the same rate and concurrency, both with uniform pacing.
func (r *Runner) crossCheck(ctx context.Context, l Load) {
	r.rec.logf("== %s: %s", l.Title, l.Describe())
	lt := &liveTarget{name: Direct, front: r.apps["http1"]}
	for round := 1; round <= r.opt.Plan.CrossRoundsOf(l); round++ {
		order := []string{ToolFortio, ToolQuicmesh}
		if round%2 == 0 {
			order = []string{ToolQuicmesh, ToolFortio}
		}
		for _, tool := range order {
			if ctx.Err() != nil {
				return
			}
			if tool == ToolQuicmesh {
				r.rec.addRun(r.gen.bench(ctx, l, "", lt, round))
				continue
			}
			r.rec.addRun(r.gen.fortioRun(ctx, l, lt, round))
		}
	}
}

// Subnets of the lossy-link scenarios, inside the lab's namespaces.
const (
	vethSubnet = "10.77.90.0/24"
	emuSubnet  = "10.77.91.0/24"
)

// lossyPhases runs the lossy-link loads in two network namespaces made
// with bench/netlab: the load generator and the outbound sidecars in
// "client", the inbound sidecars and the echo apps in "server". Loss-only
// conditions use a veth pair; conditions with delay use netlab's
// user-space TUN link emulator (tc netem is not available here). Loss is
// netlab's iptables random DROP on both sides, per packet.
func (r *Runner) lossyPhases(ctx context.Context, loads []Load) {
	if err := netlab.Available(); err != nil {
		r.rec.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	lab, err := netlab.New("qmb")
	if err != nil {
		r.rec.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	defer lab.Close()
	veth, err := lab.Pair("client", "server", vethSubnet)
	if err != nil {
		r.rec.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	var emu *netlab.Link
	conds := r.opt.Plan.Conds
	if d := firstDelay(conds); d > 0 {
		if err := netlab.TUNAvailable(); err != nil {
			r.rec.note("Delay was NOT emulated (%v): the delay conditions were dropped.", err)
		} else if emu, err = lab.DelayPair("client", "server", emuSubnet, d, 0); err != nil {
			r.rec.note("Delay was NOT emulated (%v): the delay conditions were dropped.", err)
			emu = nil
		}
		if emu == nil {
			conds = withoutDelay(conds)
			r.rec.setConds(conds)
		}
	}
	// Apps in the server namespace; every link reaches them on its lo.
	apps, procs, err := startApps(ctx, r.sup, r.opt.DevBin, "lossy-app-", veth.NSB, lossyApps,
		func() (string, error) { return r.ports.addr(veth.NSB, "127.0.0.1") })
	defer r.sup.stop(procs)
	if err != nil {
		r.rec.note("Lossy-link scenarios skipped: %v", err)
		return
	}
	// All loads over the veth link first, then over the emulated one, so
	// that a tight budget drops the delay conditions first.
	for _, link := range []*netlab.Link{veth, emu} {
		var group []Cond
		for _, c := range conds {
			if link != nil && (c.Delay > 0) == (link == emu) {
				group = append(group, c)
			}
		}
		if len(group) == 0 {
			continue
		}
		for _, l := range loads {
			if ctx.Err() != nil || !r.fitsAs(l.Title+" over the "+linkKind(link == emu)+" link", l, r.opt.Plan.LossyRounds*len(group)*len(l.Targets)) {
				continue
			}
			r.rec.logf("== %s over the %s link: %s", l.Title, linkKind(link == emu), l.Describe())
			r.lossyLink(ctx, l, link, link == emu, group, apps)
		}
	}
}

// lossyLink applies load l over one link under each of its conditions.
func (r *Runner) lossyLink(ctx context.Context, l Load, link *netlab.Link, emulated bool, conds []Cond, apps map[string]string) {
	t := topology{clientNS: link.NSA, serverNS: link.NSB, clientIP: link.AddrA.String(), serverIP: link.AddrB.String(), apps: apps}
	if err := link.SetLoss(0); err != nil {
		r.rec.note("%s: %v", l.Title, err)
		return
	}
	if emulated {
		if err := link.SetDelay(conds[0].Delay, 0); err != nil {
			r.rec.note("%s: %v", l.Title, err)
			return
		}
	}
	lts := r.startTargets(ctx, l, t, conds[0].Name)
	defer func() {
		r.stopTargets(lts)
		_ = link.SetLoss(0)
	}()
	for _, c := range conds {
		if ctx.Err() != nil {
			return
		}
		err := link.SetLoss(c.LossPct)
		if err == nil && emulated {
			err = link.SetDelay(c.Delay, 0)
		}
		if err != nil {
			r.rec.note("%s, %s: %v", l.Title, c.Name, err)
			continue
		}
		r.interleave(ctx, l, c.Name, lts, r.opt.Plan.LossyRounds)
		st := LinkStat{Load: l.ID, Cond: c.Name}
		st.LossDrops, _, _ = link.Drops()
		if emulated {
			ab, ba, _ := link.EmuStats()
			st.EmuForwarded, st.EmuQueueDrops = ab.Forwarded+ba.Forwarded, ab.QueueDrops+ba.QueueDrops
		}
		r.rec.addLinkStat(st)
	}
}

func linkKind(emulated bool) string {
	if emulated {
		return "emulated (delay)"
	}
	return "veth"
}

func firstDelay(cs []Cond) time.Duration {
	for _, c := range cs {
		if c.Delay > 0 {
			return c.Delay
		}
	}
	return 0
}

func withoutDelay(cs []Cond) []Cond {
	var out []Cond
	for _, c := range cs {
		if c.Delay == 0 {
			out = append(out, c)
		}
	}
	return out
}
