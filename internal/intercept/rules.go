package intercept

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Tables is what Apply and Undo need from one family's iptables; the
// *iptables.IPTables of github.com/coreos/go-iptables has it, and New
// returns one.
type Tables interface {
	ClearChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	InsertUnique(table, chain string, pos int, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	ChainExists(table, chain string) (bool, error)
	DeleteIfExists(table, chain string, rulespec ...string) error
	ClearAndDeleteChain(table, chain string) error
}

type opKind int

const (
	opChain     opKind = iota // create the chain, or flush it if it exists
	opAppend                  // append spec to the chain
	opJump                    // insert spec first in the chain unless it is there
	opUnjump                  // delete every copy of spec from the chain
	opDropChain               // flush and delete the chain if it exists
)

// op is one step of Apply or Undo, so that --dry-run prints exactly what
// they do.
type op struct {
	kind  opKind
	chain string
	spec  []string
}

// jumps are the rules in the built-in chains. They do not depend on the
// configuration, so Undo finds them without one.
var jumps = []op{
	{opJump, "PREROUTING", []string{"-p", "tcp", "-m", "comment", "--comment", "quicmesh: inbound TCP to the sidecar (UDP is never redirected)", "-j", PreroutingChain}},
	{opJump, "OUTPUT", []string{"-p", "tcp", "-m", "comment", "--comment", "quicmesh: outbound TCP to the sidecar", "-j", OutputChain}},
}

func ret(comment string, match ...string) []string {
	return append(match, "-m", "comment", "--comment", "quicmesh: "+comment, "-j", "RETURN")
}

func portMatch(r PortRange) []string { return []string{"-p", "tcp", "--dport", r.String()} }

// applyOps is Apply's work for one family: fill the chains first and jump
// to them last, so a failure part-way has not yet changed any traffic.
func applyOps(c Config, fam Family) []op {
	pre := []op{{kind: opChain, chain: PreroutingChain}}
	add := func(spec []string) { pre = append(pre, op{opAppend, PreroutingChain, spec}) }
	add(ret("admin port", portMatch(PortRange{c.AdminPort, c.AdminPort})...))
	add(ret("mesh port (QUIC is UDP; TCP on it stays with the sidecar)", portMatch(PortRange{c.MeshPort, c.MeshPort})...))
	for _, r := range c.SkipInboundPorts {
		add(ret("--skip-inbound-ports", portMatch(r)...))
	}
	add([]string{"-p", "tcp", "-m", "comment", "--comment", "quicmesh: to the inbound TCP listener", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.InboundPort))})

	out := []op{{kind: opChain, chain: OutputChain}}
	add = func(spec []string) { out = append(out, op{opAppend, OutputChain, spec}) }
	add(ret("sidecar traffic, by uid", "-m", "owner", "--uid-owner", strconv.FormatUint(uint64(c.ProxyUID), 10)))
	add(ret("loopback: stays in the pod", "-o", "lo"))
	for _, r := range c.SkipOutboundPorts {
		add(ret("--skip-outbound-ports", portMatch(r)...))
	}
	for _, p := range c.SkipOutboundCIDRs {
		if p.Addr().Is4() == (fam == IPv4) {
			add(ret("--skip-outbound-cidrs", "-d", p.String()))
		}
	}
	add([]string{"-p", "tcp", "-m", "comment", "--comment", "quicmesh: to the transparent outbound listener", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(c.OutboundPort))})

	return append(append(pre, out...), jumps...)
}

// undoOps is Undo's work: the jumps first, so no packet meets a
// half-deleted chain.
func undoOps() []op {
	var ops []op
	for _, j := range jumps {
		ops = append(ops, op{opUnjump, j.chain, j.spec})
	}
	return append(ops, op{kind: opDropChain, chain: PreroutingChain}, op{kind: opDropChain, chain: OutputChain})
}

// Apply writes the rules for one family. Re-running it with the same
// configuration leaves the same rule set; with another configuration, the
// chains hold the new rules. If it fails, it removes the quicmesh rules
// again (as Undo), so the pod is never left with half of them.
func Apply(t Tables, c Config, fam Family) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := run(t, applyOps(c, fam)); err != nil {
		if uerr := Undo(t); uerr != nil {
			return fmt.Errorf("%s: %w (and removing the rules again failed: %v)", fam, err, uerr)
		}
		return fmt.Errorf("%s: %w (no quicmesh rules were left)", fam, err)
	}
	return nil
}

// FamilyTables is one family's iptables.
type FamilyTables struct {
	Family Family
	Tables Tables
}

// ApplyAll applies the rules to every family in turn. When one fails, the
// families already done are undone too: a pod gets all of its rules or
// none.
func ApplyAll(c Config, fts ...FamilyTables) error {
	for i, ft := range fts {
		if err := Apply(ft.Tables, c, ft.Family); err != nil {
			for _, done := range fts[:i] {
				if uerr := Undo(done.Tables); uerr != nil {
					return fmt.Errorf("%w; removing the %s rules again failed: %v", err, done.Family, uerr)
				}
			}
			return err
		}
	}
	return nil
}

// UndoAll undoes every family, and reports every failure.
func UndoAll(fts ...FamilyTables) error {
	var errs []error
	for _, ft := range fts {
		if err := Undo(ft.Tables); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ft.Family, err))
		}
	}
	return errors.Join(errs...)
}

// Undo removes the jumps and chains Apply adds, and nothing else. Without
// them it does nothing.
func Undo(t Tables) error {
	return run(t, undoOps())
}

// maxCopies bounds the deletion of duplicate jumps (an older tool's, or a
// hand-made copy): Undo removes them all, but never loops forever.
const maxCopies = 64

func run(t Tables, ops []op) error {
	for _, o := range ops {
		var err error
		switch o.kind {
		case opChain:
			err = t.ClearChain(Table, o.chain)
		case opAppend:
			err = t.Append(Table, o.chain, o.spec...)
		case opJump:
			err = t.InsertUnique(Table, o.chain, 1, o.spec...)
		case opUnjump:
			err = deleteAll(t, o.chain, o.spec)
		case opDropChain:
			err = t.ClearAndDeleteChain(Table, o.chain)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", o.describe(), err)
		}
	}
	return nil
}

// deleteAll deletes every copy of a jump rule. A jump to a chain that does
// not exist cannot exist either (and iptables refuses to look for one).
func deleteAll(t Tables, chain string, spec []string) error {
	if ok, err := t.ChainExists(Table, spec[len(spec)-1]); err != nil || !ok {
		return err
	}
	for range maxCopies {
		ok, err := t.Exists(Table, chain, spec...)
		if err != nil || !ok {
			return err
		}
		if err := t.DeleteIfExists(Table, chain, spec...); err != nil {
			return err
		}
	}
	return fmt.Errorf("more than %d copies", maxCopies)
}

func (o op) describe() string {
	switch o.kind {
	case opChain:
		return "creating chain " + o.chain
	case opAppend:
		return "adding rule to " + o.chain
	case opJump:
		return "inserting jump in " + o.chain
	case opUnjump:
		return "deleting jump from " + o.chain
	default:
		return "deleting chain " + o.chain
	}
}

// PrintApply writes, as iptables commands, what Apply does for each
// family.
func PrintApply(w io.Writer, c Config, fams ...Family) error {
	if err := c.Validate(); err != nil {
		return err
	}
	for _, f := range fams {
		fmt.Fprintf(w, "# %s: chains are created (flushed if they exist); a jump is inserted only if missing\n", f)
		if err := print(w, f, applyOps(c, f)); err != nil {
			return err
		}
	}
	return nil
}

// PrintUndo writes, as iptables commands, what Undo does for each family.
func PrintUndo(w io.Writer, fams ...Family) error {
	for _, f := range fams {
		fmt.Fprintf(w, "# %s: each command runs only if its rule or chain exists\n", f)
		if err := print(w, f, undoOps()); err != nil {
			return err
		}
	}
	return nil
}

func print(w io.Writer, fam Family, ops []op) error {
	var b strings.Builder
	line := func(args ...string) {
		b.WriteString(fam.Command() + " -t " + Table)
		for _, a := range args {
			b.WriteString(" " + shellQuote(a))
		}
		b.WriteString("\n")
	}
	for _, o := range ops {
		switch o.kind {
		case opChain:
			line("-N", o.chain)
		case opAppend:
			line(append([]string{"-A", o.chain}, o.spec...)...)
		case opJump:
			line(append([]string{"-I", o.chain, "1"}, o.spec...)...)
		case opUnjump:
			line(append([]string{"-D", o.chain}, o.spec...)...)
		case opDropChain:
			line("-F", o.chain)
			line("-X", o.chain)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// shellQuote quotes an argument for a POSIX shell when it needs it, so the
// printed commands can be pasted.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,=", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
