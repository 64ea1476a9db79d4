// Package cli gives every quicmesh command the same command-line contract:
//
//   - -h, -help or --help prints the command's usage on stdout; exit 0.
//   - A malformed command line — an unknown flag, a flag without its
//     value, a stray argument, an unknown subcommand — is one line on
//     stderr pointing at -h; exit 2 ([ExitUsage]).
//   - A well-formed command line with a value that cannot be used — a bad
//     duration, a missing required setting, a port already in use — is one
//     line on stderr naming the flag or config key; exit 1 ([ExitFail]).
//
// The standard flag package prints the whole flag list on every parse
// error and treats a bad value like an unknown flag; Command keeps the
// flag package for parsing and replaces its reporting.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Exit statuses of every quicmesh command.
const (
	ExitOK    = 0
	ExitFail  = 1 // configuration error, or the command could not do its job
	ExitUsage = 2 // malformed command line
)

// Command is one command's flag set and its reporting.
type Command struct {
	// Name is the command as typed, e.g. "quicmesh proxy"; every message
	// starts with it.
	Name string
	// Usage is printed above the flag list by -h. It should end with a
	// newline.
	Usage string
	// Flags holds the command's flags; define them before Parse.
	Flags *flag.FlagSet

	stdout, stderr io.Writer
}

// New returns a Command writing help to stdout and errors to stderr.
func New(name, usage string, stdout, stderr io.Writer) *Command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &Command{Name: name, Usage: usage, Flags: fs, stdout: stdout, stderr: stderr}
}

// Parse parses args. When it returns ok == false the command is over and
// code is its exit status: help was printed (0), or one error line was
// (1 or 2). With ok == true the flags are set and no positional argument
// remains.
func (c *Command) Parse(args []string) (code int, ok bool) {
	var bad *valueError
	c.Flags.VisitAll(func(f *flag.Flag) { f.Value = &checkedValue{Value: f.Value, name: f.Name, bad: &bad} })
	err := c.Flags.Parse(args)
	// Unwrap again so that the flag set prints defaults and serves Get
	// as if never wrapped.
	c.Flags.VisitAll(func(f *flag.Flag) { f.Value = f.Value.(*checkedValue).Value })
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.Help()
		return ExitOK, false
	case bad != nil:
		return c.Fail("%v", bad), false
	case err != nil:
		return c.UsageError("%s", flagSyntaxError(err)), false
	case c.Flags.NArg() > 0:
		return c.UsageError("unexpected argument %q", c.Flags.Arg(0)), false
	}
	return ExitOK, true
}

// Help writes the usage text and the flag list to stdout.
func (c *Command) Help() {
	fmt.Fprint(c.stdout, c.Usage)
	n := 0
	c.Flags.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(c.stdout, "\nFlags:")
	c.Flags.SetOutput(c.stdout)
	c.Flags.PrintDefaults()
	c.Flags.SetOutput(io.Discard)
}

// UsageError reports a malformed command line in one line and returns
// ExitUsage.
func (c *Command) UsageError(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "%s: %s; see '%s --help'\n", c.Name, oneLine(fmt.Sprintf(format, a...)), c.Name)
	return ExitUsage
}

// Fail reports a configuration or run-time error in one line and returns
// ExitFail. The message should name the flag, config key or file at
// fault.
func (c *Command) Fail(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "%s: %s\n", c.Name, oneLine(fmt.Sprintf(format, a...)))
	return ExitFail
}

// Subcommand runs one subcommand with its arguments (not including its
// name) and returns the exit status.
type Subcommand func(args []string, stdout, stderr io.Writer) int

// Dispatch runs the subcommand named by args[0] with the rest of args, or
// prints help, or reports a missing or unknown subcommand in one line
// listing the valid ones.
func (c *Command) Dispatch(subs map[string]Subcommand, args []string) int {
	want := "want " + orList(slices.Collect(maps.Keys(subs)))
	switch {
	case len(args) == 0:
		return c.UsageError("missing command (%s)", want)
	case IsHelp(args[0]):
		c.Help()
		return ExitOK
	case strings.HasPrefix(args[0], "-"):
		return c.UsageError("unknown flag %s (%s)", args[0], want)
	}
	sub, ok := subs[args[0]]
	if !ok {
		return c.UsageError("unknown command %q (%s)", args[0], want)
	}
	return sub(args[1:], c.stdout, c.stderr)
}

// orList formats names, sorted, as "a, b or c".
func orList(names []string) string {
	slices.Sort(names)
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// IsHelp reports whether arg asks for help; commands that dispatch to
// subcommands use it before any flag parsing.
func IsHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// oneLine folds a multi-line message (some library errors have several)
// into one line, so every error is exactly one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "\n") {
		return s
	}
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

// flagSyntaxError rewords the flag package's parse errors into the
// double-dash style the documentation uses.
func flagSyntaxError(err error) string {
	msg := err.Error()
	for prefix, wording := range map[string]string{
		"flag provided but not defined: -": "unknown flag --",
		"flag needs an argument: -":        "flag needs a value: --",
	} {
		if name, ok := strings.CutPrefix(msg, prefix); ok {
			return wording + name
		}
	}
	return msg
}

// valueError is a flag whose value was rejected.
type valueError struct {
	name, value string
	err         error
}

func (e *valueError) Error() string {
	return fmt.Sprintf("--%s: invalid value %q: %v", e.name, e.value, e.err)
}

func (e *valueError) Unwrap() error { return e.err }

// checkedValue records the first rejected value so Parse can tell a bad
// value (exit 1, naming the flag) from a malformed command line (exit 2).
type checkedValue struct {
	flag.Value
	name string
	bad  **valueError
}

func (v *checkedValue) Set(s string) error {
	err := v.Value.Set(s)
	if err != nil && *v.bad == nil {
		*v.bad = &valueError{name: v.name, value: s, err: explainValueError(v.Value, err)}
	}
	return err
}

// IsBoolFlag keeps boolean flags usable without a value.
func (v *checkedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// explainValueError replaces the flag package's bare "parse error" for its
// built-in types with what the flag wants.
func explainValueError(v flag.Value, err error) error {
	g, ok := v.(flag.Getter)
	if !ok || err.Error() != "parse error" {
		return err
	}
	switch g.Get().(type) {
	case time.Duration:
		return errors.New("want a duration such as 500ms, 30s or 5m")
	case bool:
		return errors.New("want true or false")
	case int, int64, uint, uint64:
		return errors.New("want a whole number")
	case float64:
		return errors.New("want a number")
	}
	return err
}
