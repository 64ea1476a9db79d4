package intercept

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func fullConfig() Config {
	return Config{
		ProxyUID: 1337, OutboundPort: 4145, InboundPort: 4146, AdminPort: 4191, MeshPort: 4143,
		SkipOutboundPorts: []PortRange{{25, 25}, {8000, 8100}},
		SkipInboundPorts:  []PortRange{{9100, 9100}},
		SkipOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("fd00::/8")},
	}
}

// The dry-run output is what the documentation shows and what operators
// paste: it is compared whole.
func TestPrintGolden(t *testing.T) {
	tests := []struct {
		golden string
		print  func(*bytes.Buffer) error
	}{
		{"apply.golden", func(b *bytes.Buffer) error { return PrintApply(b, fullConfig(), IPv4, IPv6) }},
		{"apply-ipv4-minimal.golden", func(b *bytes.Buffer) error {
			return PrintApply(b, Config{ProxyUID: 7, OutboundPort: 1, InboundPort: 2, AdminPort: 3, MeshPort: 4}, IPv4)
		}},
		{"undo.golden", func(b *bytes.Buffer) error { return PrintUndo(b, IPv4, IPv6) }},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			var b bytes.Buffer
			if err := tt.print(&b); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got := b.String(); got != string(want) {
				t.Errorf("output differs from %s (go test -update rewrites it):\n%s", path, got)
			}
		})
	}
}

// What the rules must and must not say, whatever the golden file holds.
func TestPrintedRules(t *testing.T) {
	var b bytes.Buffer
	if err := PrintApply(&b, fullConfig(), IPv4, IPv6); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	has := func(t *testing.T, want string) {
		t.Helper()
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("no rule contains %q:\n%s", want, b.String())
		}
	}
	for _, want := range []string{
		"iptables -t nat -A QUICMESH_OUTPUT -m owner --uid-owner 1337 ",
		"iptables -t nat -A QUICMESH_OUTPUT -o lo ",
		"iptables -t nat -A QUICMESH_OUTPUT -d 169.254.169.254/32 ",
		"ip6tables -t nat -A QUICMESH_OUTPUT -d fd00::/8 ",
		"iptables -t nat -A QUICMESH_OUTPUT -p tcp --dport 8000:8100 ",
		"iptables -t nat -A QUICMESH_PREROUTING -p tcp --dport 4191 ",
		"iptables -t nat -A QUICMESH_PREROUTING -p tcp --dport 9100 ",
		"-j REDIRECT --to-ports 4145",
		"-j REDIRECT --to-ports 4146",
		"iptables -t nat -I OUTPUT 1 -p tcp ",
		"iptables -t nat -I PREROUTING 1 -p tcp ",
	} {
		has(t, want)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "iptables ") && strings.Contains(l, "fd00::/8") || strings.HasPrefix(l, "ip6tables ") && strings.Contains(l, "169.254") {
			t.Errorf("a CIDR in the other family's rules: %s", l)
		}
		if strings.Contains(l, "-p udp") {
			t.Errorf("UDP must never be matched: %s", l)
		}
	}
	// Every exclusion comes before the redirect it guards.
	for _, chain := range []string{OutputChain, PreroutingChain} {
		var rules []string
		for _, l := range lines {
			if strings.HasPrefix(l, "iptables -t nat -A "+chain+" ") {
				rules = append(rules, l)
			}
		}
		if len(rules) == 0 || !strings.Contains(rules[len(rules)-1], "-j REDIRECT") || slices.ContainsFunc(rules[:len(rules)-1], func(l string) bool { return !strings.HasSuffix(l, "-j RETURN") }) {
			t.Errorf("%s: want RETURNs then one REDIRECT, got:\n%s", chain, strings.Join(rules, "\n"))
		}
	}
}

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{"", nil, ""},
		{" 25 ", []PortRange{{25, 25}}, ""},
		{"25,8000-8100,,443", []PortRange{{25, 25}, {8000, 8100}, {443, 443}}, ""},
		{"1-65535", []PortRange{{1, 65535}}, ""},
		{"0", nil, `"0": want a port`},
		{"65536", nil, `"65536": want a port`},
		{"http", nil, `"http": want a port`},
		{"90-80", nil, "range ends before it starts"},
		{"80-", nil, `"80-": want a port`},
		{"-80", nil, `"-80": want a port`},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePorts(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"10.0.0.0/8, fd00::/8", []string{"10.0.0.0/8", "fd00::/8"}, ""},
		{"192.0.2.1", []string{"192.0.2.1/32"}, ""},
		{"2001:db8::1", []string{"2001:db8::1/128"}, ""},
		{"::ffff:192.0.2.1", []string{"192.0.2.1/32"}, ""},
		{"10.1.0.0/8", nil, "host bits set (did you mean 10.0.0.0/8?)"},
		{"10.0.0.0/33", nil, "want a CIDR"},
		{"example.com", nil, "want a CIDR"},
	}
	for _, tt := range tests {
		got, err := ParseCIDRs(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCIDRs(%q) error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		var gotS []string
		for _, p := range got {
			gotS = append(gotS, p.String())
		}
		if err != nil || !slices.Equal(gotS, tt.want) {
			t.Errorf("ParseCIDRs(%q) = %v, %v; want %v", tt.in, gotS, err, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"complete", func(*Config) {}, ""},
		{"root sidecar", func(c *Config) { c.ProxyUID = 0 }, "--proxy-uid 0"},
		{"no outbound port", func(c *Config) { c.OutboundPort = 0 }, "--outbound-port: must be a port"},
		{"admin on inbound", func(c *Config) { c.AdminPort = c.InboundPort }, "--inbound-port and --admin-port are both 4146"},
		{"mesh on outbound", func(c *Config) { c.MeshPort = c.OutboundPort }, "--outbound-port and --mesh-port are both 4145"},
		{"backwards range", func(c *Config) { c.SkipInboundPorts = []PortRange{{9, 8}} }, "--skip-inbound-ports: bad range 9-8"},
		{"invalid prefix", func(c *Config) { c.SkipOutboundCIDRs = []netip.Prefix{{}} }, "--skip-outbound-cidrs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fullConfig()
			tt.edit(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// fakeTables records the calls and fails the one numbered failAt
// (counting from 1; 0 never fails).
type fakeTables struct {
	calls  []string
	failAt int
	chains map[string]bool
}

func (f *fakeTables) call(s string) error {
	f.calls = append(f.calls, s)
	if len(f.calls) == f.failAt {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeTables) ClearChain(_, chain string) error {
	if f.chains == nil {
		f.chains = map[string]bool{}
	}
	f.chains[chain] = true
	return f.call("clear " + chain)
}
func (f *fakeTables) Append(_, chain string, _ ...string) error { return f.call("append " + chain) }
func (f *fakeTables) InsertUnique(_, chain string, _ int, _ ...string) error {
	return f.call("jump " + chain)
}
func (f *fakeTables) Exists(string, string, ...string) (bool, error) { return false, nil }
func (f *fakeTables) ChainExists(_, chain string) (bool, error)      { return f.chains[chain], nil }
func (f *fakeTables) DeleteIfExists(_, chain string, _ ...string) error {
	return f.call("delete " + chain)
}
func (f *fakeTables) ClearAndDeleteChain(_, chain string) error {
	delete(f.chains, chain)
	return f.call("drop " + chain)
}

// Chains are filled before anything jumps to them; a failure removes what
// was added, in every family already done.
func TestApplyOrderAndRollback(t *testing.T) {
	ok := &fakeTables{}
	if err := Apply(ok, fullConfig(), IPv4); err != nil {
		t.Fatal(err)
	}
	firstJump := slices.IndexFunc(ok.calls, func(s string) bool { return strings.HasPrefix(s, "jump ") })
	if firstJump != len(ok.calls)-2 {
		t.Errorf("jumps are not the last two steps: %v", ok.calls)
	}

	v4 := &fakeTables{}
	v6 := &fakeTables{failAt: 3}
	err := ApplyAll(fullConfig(), FamilyTables{IPv4, v4}, FamilyTables{IPv6, v6})
	if err == nil || !strings.Contains(err.Error(), "IPv6: adding rule to QUICMESH_PREROUTING: injected failure (no quicmesh rules were left)") {
		t.Fatalf("ApplyAll error %v", err)
	}
	for name, f := range map[string]*fakeTables{"IPv4": v4, "IPv6": v6} {
		if len(f.chains) != 0 {
			t.Errorf("%s: chains left after a failed ApplyAll: %v (calls %v)", name, f.chains, f.calls)
		}
	}
}
