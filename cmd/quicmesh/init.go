package main

import (
	"fmt"
	"io"
	"strconv"

	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/intercept"
)

const initUsage = `Usage:
  quicmesh init --proxy-uid UID [flags]   redirect the pod's TCP through its sidecar
  quicmesh init --undo                    remove those rules again
  quicmesh init --dry-run ...             print the iptables commands instead (no root needed)

Run as root inside the pod's network namespace before the app starts (an
init container). Writes iptables nat rules (and ip6tables, unless
--ipv6=false): the pod's outgoing TCP goes to --outbound-port, TCP
arriving at the pod to --inbound-port. Not redirected: the sidecar's own
connections (--proxy-uid), loopback, the admin port, the mesh port (QUIC
is UDP, which is never redirected) and the skip lists. Safe to re-run;
--undo leaves the rule set as it was before. docs/design.md,
"Interception", has the rules.
`

func runInit(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh init", initUsage, stdout, stderr)
	cfg := intercept.Config{
		OutboundPort: intercept.DefaultOutboundPort,
		InboundPort:  intercept.DefaultInboundPort,
		AdminPort:    intercept.DefaultAdminPort,
		MeshPort:     intercept.DefaultMeshPort,
	}
	uidSet := false
	c.Flags.Func("proxy-uid", "`UID` the sidecar runs as; its own connections are not redirected (required, not 0)", func(s string) error {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("want a numeric UID")
		}
		cfg.ProxyUID, uidSet = uint32(n), true
		return nil
	})
	c.Flags.Var((*portFlag)(&cfg.OutboundPort), "outbound-port", "the sidecar's transparent outbound TCP `PORT`: the pod's outgoing TCP goes here")
	c.Flags.Var((*portFlag)(&cfg.InboundPort), "inbound-port", "the sidecar's inbound TCP `PORT`: TCP arriving at the pod goes here")
	c.Flags.Var((*portFlag)(&cfg.AdminPort), "admin-port", "the sidecar's admin `PORT` (TCP), reached directly")
	c.Flags.Var((*portFlag)(&cfg.MeshPort), "mesh-port", "the sidecar's mesh `PORT` (QUIC over UDP), reached directly")
	c.Flags.Func("skip-outbound-ports", "destination `PORTS` the app reaches directly, e.g. 25,8000-8100", func(s string) (err error) {
		cfg.SkipOutboundPorts, err = intercept.ParsePorts(s)
		return err
	})
	c.Flags.Func("skip-inbound-ports", "pod `PORTS` reached directly from outside, e.g. 9100", func(s string) (err error) {
		cfg.SkipInboundPorts, err = intercept.ParsePorts(s)
		return err
	})
	c.Flags.Func("skip-outbound-cidrs", "destination `CIDRS` the app reaches directly, e.g. 169.254.169.254/32,fd00::/8", func(s string) (err error) {
		cfg.SkipOutboundCIDRs, err = intercept.ParseCIDRs(s)
		return err
	})
	ipv6 := c.Flags.Bool("ipv6", true, "also write ip6tables rules; false leaves IPv6 TCP unredirected (only for pods without IPv6)")
	undo := c.Flags.Bool("undo", false, "remove the quicmesh rules and chains instead (other flags but --ipv6 and --dry-run are ignored)")
	dryRun := c.Flags.Bool("dry-run", false, "print the iptables commands instead of running them")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	fams := []intercept.Family{intercept.IPv4}
	famNames := "IPv4"
	if *ipv6 {
		fams = append(fams, intercept.IPv6)
		famNames = "IPv4 and IPv6"
	}
	if !*undo {
		if !uidSet {
			return c.Fail("--proxy-uid is required: the UID the sidecar runs as, whose connections are not redirected")
		}
		if err := cfg.Validate(); err != nil {
			return c.Fail("%v", err)
		}
	}
	if *dryRun {
		var err error
		if *undo {
			err = intercept.PrintUndo(stdout, fams...)
		} else {
			err = intercept.PrintApply(stdout, cfg, fams...)
		}
		if err != nil {
			return c.Fail("%v", err)
		}
		return cli.ExitOK
	}
	if err := intercept.CheckPrivilege(); err != nil {
		return c.Fail("%v", err)
	}
	var fts []intercept.FamilyTables
	for _, f := range fams {
		t, err := intercept.New(f)
		if err != nil {
			if f == intercept.IPv6 {
				return c.Fail("%v; --ipv6=false writes IPv4 rules only", err)
			}
			return c.Fail("%v", err)
		}
		fts = append(fts, intercept.FamilyTables{Family: f, Tables: t})
	}
	if *undo {
		if err := intercept.UndoAll(fts...); err != nil {
			return c.Fail("%v", err)
		}
		fmt.Fprintf(stdout, "removed the quicmesh nat rules (%s)\n", famNames)
		return cli.ExitOK
	}
	if err := intercept.ApplyAll(cfg, fts...); err != nil {
		return c.Fail("%v", err)
	}
	fmt.Fprintf(stdout, "redirecting TCP (%s): outgoing to port %d, incoming to port %d; not redirected: uid %d, loopback, admin port %d, mesh port %d, and the skip lists\n",
		famNames, cfg.OutboundPort, cfg.InboundPort, cfg.ProxyUID, cfg.AdminPort, cfg.MeshPort)
	return cli.ExitOK
}

// portFlag is a TCP or UDP port number flag (1-65535).
type portFlag uint16

func (p *portFlag) String() string { return strconv.Itoa(int(*p)) }

func (p *portFlag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("want a port from 1 to 65535")
	}
	*p = portFlag(n)
	return nil
}
