package cli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOK     bool
		wantStdout string // substring; "" means stdout must be empty
		wantStderr string // substring of the single line; "" means stderr must be empty
	}{
		{"no flags", nil, ExitOK, true, "", ""},
		{"all kinds", []string{"--d", "2s", "--b", "--n", "3", "--s", "x"}, ExitOK, true, "", ""},
		{"help", []string{"--help"}, ExitOK, false, "Usage: t", ""},
		{"-h", []string{"-h"}, ExitOK, false, "-d duration", ""},
		{"-help", []string{"-help"}, ExitOK, false, "Usage: t", ""},
		{"unknown flag", []string{"--nope"}, ExitUsage, false, "", "t: unknown flag --nope; see 't --help'"},
		{"missing value", []string{"--s"}, ExitUsage, false, "", "t: flag needs a value: --s"},
		{"stray argument", []string{"--s", "x", "extra"}, ExitUsage, false, "", `t: unexpected argument "extra"`},
		{"bad duration", []string{"--d", "3x"}, ExitFail, false, "", `t: --d: invalid value "3x": want a duration`},
		{"bad int", []string{"--n", "many"}, ExitFail, false, "", `t: --n: invalid value "many": want a whole number`},
		{"bad bool", []string{"--b=maybe"}, ExitFail, false, "", `t: --b: invalid value "maybe"`},
		{"custom value", []string{"--kv", "novalue"}, ExitFail, false, "", `t: --kv: invalid value "novalue": want K=V`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			c := New("t", "Usage: t [flags]\n", &out, &errb)
			c.Flags.Duration("d", time.Second, "a duration")
			c.Flags.Bool("b", false, "a bool")
			c.Flags.Int("n", 1, "an int")
			c.Flags.String("s", "", "a string")
			c.Flags.Func("kv", "K=V", func(s string) error {
				if !strings.Contains(s, "=") {
					return errString("want K=V")
				}
				return nil
			})
			code, ok := c.Parse(tt.args)
			if code != tt.wantCode || ok != tt.wantOK {
				t.Fatalf("Parse = %d, %v; want %d, %v (stderr %q)", code, ok, tt.wantCode, tt.wantOK, errb.String())
			}
			checkOutput(t, "stdout", out.String(), tt.wantStdout, false)
			checkOutput(t, "stderr", errb.String(), tt.wantStderr, true)
		})
	}
}

func checkOutput(t *testing.T, what, got, want string, oneLine bool) {
	t.Helper()
	if want == "" {
		if got != "" {
			t.Errorf("%s = %q, want nothing", what, got)
		}
		return
	}
	if !strings.Contains(got, want) {
		t.Errorf("%s = %q, want it to contain %q", what, got, want)
	}
	if (oneLine && strings.Count(got, "\n") != 1) || !strings.HasSuffix(got, "\n") {
		t.Errorf("%s = %q, want exactly one line", what, got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// Parse leaves the flag set as if never wrapped: the defaults print as
// usual and Visit sees the flags given.
func TestParseRestoresFlags(t *testing.T) {
	var out bytes.Buffer
	c := New("t", "", &out, &out)
	d := c.Flags.Duration("d", 30*time.Second, "grace")
	if code, ok := c.Parse([]string{"--d", "1m"}); !ok {
		t.Fatalf("Parse = %d", code)
	}
	if *d != time.Minute {
		t.Errorf("d = %v", *d)
	}
	c.Help()
	if !strings.Contains(out.String(), "(default 30s)") {
		t.Errorf("help lost the default:\n%s", out.String())
	}
}

func TestFailIsOneLine(t *testing.T) {
	var errb bytes.Buffer
	c := New("t", "", &errb, &errb)
	if code := c.Fail("bad:\n  line two\n"); code != ExitFail {
		t.Errorf("code %d", code)
	}
	if got := errb.String(); got != "t: bad:; line two\n" {
		t.Errorf("stderr %q", got)
	}
}

func TestDispatch(t *testing.T) {
	subs := func(ran *[]string) map[string]Subcommand {
		sub := func(name string) Subcommand {
			return func(args []string, stdout, stderr io.Writer) int {
				*ran = append(*ran, name+" "+strings.Join(args, " "))
				fmt.Fprint(stdout, "ran "+name)
				return 7
			}
		}
		return map[string]Subcommand{"init": sub("init"), "issue": sub("issue"), "abort": sub("abort")}
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantRan    string // the subcommand and its arguments; "" means none ran
		wantStdout string // substring; "" means stdout must be empty
		wantStderr string // substring of the single line; "" means stderr must be empty
	}{
		{"runs the named subcommand with the rest", []string{"issue", "--id", "x"}, 7, "issue --id x", "ran issue", ""},
		{"subcommand without arguments", []string{"init"}, 7, "init ", "ran init", ""},
		{"missing", nil, ExitUsage, "", "", "t: missing command (want abort, init or issue); see 't --help'"},
		{"help", []string{"help"}, ExitOK, "", "Usage: t COMMAND", ""},
		{"--help", []string{"--help"}, ExitOK, "", "Usage: t COMMAND", ""},
		{"flag before the command", []string{"--id", "x"}, ExitUsage, "", "", "t: unknown flag --id (want abort, init or issue)"},
		{"unknown", []string{"frob", "x"}, ExitUsage, "", "", `t: unknown command "frob" (want abort, init or issue)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			var ran []string
			code := New("t", "Usage: t COMMAND\n", &out, &errb).Dispatch(subs(&ran), tt.args)
			if code != tt.wantCode {
				t.Errorf("code %d, want %d", code, tt.wantCode)
			}
			if got := strings.Join(ran, "|"); got != tt.wantRan {
				t.Errorf("ran %q, want %q", got, tt.wantRan)
			}
			if (tt.wantStdout == "") != (out.Len() == 0) || !strings.Contains(out.String(), tt.wantStdout) {
				t.Errorf("stdout %q, want %q", out.String(), tt.wantStdout)
			}
			if tt.wantStderr == "" && errb.Len() != 0 || tt.wantStderr != "" && (strings.Count(errb.String(), "\n") != 1 || !strings.Contains(errb.String(), tt.wantStderr)) {
				t.Errorf("stderr %q, want one line containing %q", errb.String(), tt.wantStderr)
			}
		})
	}
}

func TestOrList(t *testing.T) {
	for _, tt := range []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"a"}, "a"},
		{[]string{"b", "a"}, "a or b"},
		{[]string{"c", "a", "b"}, "a, b or c"},
	} {
		if got := orList(tt.in); got != tt.want {
			t.Errorf("orList(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
