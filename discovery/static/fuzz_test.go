package static

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
)

// fileFormat mirrors the file format, for re-encoding parsed data.
type fileFormat struct {
	Services map[string]struct {
		Endpoints []discovery.Endpoint `json:"endpoints"`
	} `json:"services"`
}

func encode(t testing.TB, m map[string][]discovery.Endpoint) []byte {
	var f fileFormat
	f.Services = make(map[string]struct {
		Endpoints []discovery.Endpoint `json:"endpoints"`
	})
	for name, eps := range m {
		f.Services[name] = struct {
			Endpoints []discovery.Endpoint `json:"endpoints"`
		}{eps}
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// FuzzParse checks that Parse never panics, that every error is a
// *ParseError, and that whatever it accepts satisfies the validation rules
// and survives a re-encode/re-parse round trip unchanged.
func FuzzParse(f *testing.F) {
	seeds := []string{
		`{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "spiffe://demo.local/ns/default/sa/echo", "weight": 1, "zone": "a", "metadata": {"k":"v"}}]}}}`,
		`{}`,
		`{"services": {}}`,
		`{"services": {"echo": {}}}`,
		`{"services": {"a.b-c": {"endpoints": [{"addr": "[::1]:1", "identity": "spiffe://x"}, {"addr": "h:65535", "identity": "spiffe://x/y", "weight": 0}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "metadata": {"a": "<&>", "\u00e9": "\ud83d\ude00"}}]}}}`,
		``,
		`null`,
		`[]`,
		`{"services": {`,
		`{"services": {"echo": {"endpoints": [}]}}}`,
		`{} {}`,
		`{"servces": {}}`,
		`{"services": {"Echo:80": {}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h", "identity": "spiffe://x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:0", "identity": "x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "weight": -1.5e3}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x"}, {"addr": "h:1", "identity": "spiffe://x"}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "metadata": {"k": null}}]}}}`,
		`{"services": {"echo": {"endpoints": [{"addr": "h:1", "identity": "spiffe://x", "addr": "h:2"}]}}}`,
		"{\"services\": {\"e\xffcho\": {}}}",
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"services": {"echo": {"endpoints": [[[[[[{}]]]]]]}}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *ParseError", err, err)
			}
			if m != nil {
				t.Fatalf("data returned with error")
			}
			if err.Error() == "" {
				t.Fatalf("empty error message")
			}
			return
		}
		for name, eps := range m {
			if err := validateServiceName(name); err != nil {
				t.Fatalf("accepted invalid service name %q: %v", name, err)
			}
			if eps == nil {
				t.Fatalf("service %q has a nil endpoint slice", name)
			}
			keys := make(map[string]bool)
			for i, ep := range eps {
				if err := validateAddr(ep.Addr); err != nil {
					t.Fatalf("%s[%d]: accepted invalid addr %q: %v", name, i, ep.Addr, err)
				}
				if !strings.HasPrefix(ep.Identity, "spiffe://") || len(ep.Identity) <= len("spiffe://") {
					t.Fatalf("%s[%d]: accepted invalid identity %q", name, i, ep.Identity)
				}
				if ep.Weight == 0 {
					t.Fatalf("%s[%d]: weight 0 not defaulted", name, i)
				}
				if ep.Metadata != nil && len(ep.Metadata) == 0 {
					t.Fatalf("%s[%d]: empty non-nil metadata", name, i)
				}
				if keys[ep.Key()] {
					t.Fatalf("%s[%d]: accepted duplicate endpoint %q", name, i, ep.Key())
				}
				keys[ep.Key()] = true
			}
		}
		again, err := Parse(encode(t, m))
		if err != nil {
			t.Fatalf("re-parse of re-encoded data failed: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip changed data:\n%#v\n%#v", m, again)
		}
	})
}
