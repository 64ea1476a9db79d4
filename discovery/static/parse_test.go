package static

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
)

const (
	echoID = "spiffe://demo.local/ns/default/sa/echo"
	webID  = "spiffe://demo.local/ns/default/sa/web"
)

// one wraps a single endpoint object into a file with service "echo".
func one(ep string) string {
	return `{"services": {"echo": {"endpoints": [` + ep + `]}}}`
}

// two wraps a valid endpoint followed by ep.
func two(ep string) string {
	return one(`{"addr": "10.0.0.1:4143", "identity": "` + echoID + `"}, ` + ep)
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string][]discovery.Endpoint
	}{
		{
			name: "full example",
			in: `{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143",
				"identity": "spiffe://demo.local/ns/default/sa/echo", "weight": 1, "zone": "a",
				"metadata": {"k":"v"}}]}}}`,
			want: map[string][]discovery.Endpoint{"echo": {{
				Addr: "127.0.0.1:4143", Identity: echoID, Weight: 1, Zone: "a",
				Metadata: map[string]string{"k": "v"},
			}}},
		},
		{name: "empty object", in: `{}`, want: map[string][]discovery.Endpoint{}},
		{name: "no services", in: " \n{\"services\": {}}\n ", want: map[string][]discovery.Endpoint{}},
		{
			name: "service without endpoints key",
			in:   `{"services": {"echo": {}}}`,
			want: map[string][]discovery.Endpoint{"echo": {}},
		},
		{
			name: "service with empty endpoints",
			in:   `{"services": {"echo": {"endpoints": []}}}`,
			want: map[string][]discovery.Endpoint{"echo": {}},
		},
		{
			name: "weight defaults to 1, explicit 0 too, others kept",
			in: `{"services": {"echo": {"endpoints": [
				{"addr": "a:1", "identity": "` + echoID + `"},
				{"addr": "b:2", "identity": "` + echoID + `", "weight": 0},
				{"addr": "c:3", "identity": "` + echoID + `", "weight": 4294967295}]}}}`,
			want: map[string][]discovery.Endpoint{"echo": {
				{Addr: "a:1", Identity: echoID, Weight: 1},
				{Addr: "b:2", Identity: echoID, Weight: 1},
				{Addr: "c:3", Identity: echoID, Weight: 4294967295},
			}},
		},
		{
			name: "empty metadata becomes nil",
			in:   one(`{"addr": "a:1", "identity": "` + echoID + `", "metadata": {}}`),
			want: map[string][]discovery.Endpoint{"echo": {{Addr: "a:1", Identity: echoID, Weight: 1}}},
		},
		{
			name: "ipv6 and host names",
			in: one(`{"addr": "[::1]:4143", "identity": "` + echoID + `"},
				{"addr": "echo.default.svc:65535", "identity": "` + echoID + `"}`),
			want: map[string][]discovery.Endpoint{"echo": {
				{Addr: "[::1]:4143", Identity: echoID, Weight: 1},
				{Addr: "echo.default.svc:65535", Identity: echoID, Weight: 1},
			}},
		},
		{
			name: "same addr different identity is not a duplicate",
			in: one(`{"addr": "a:1", "identity": "` + echoID + `"},
				{"addr": "a:1", "identity": "` + webID + `"}`),
			want: map[string][]discovery.Endpoint{"echo": {
				{Addr: "a:1", Identity: echoID, Weight: 1},
				{Addr: "a:1", Identity: webID, Weight: 1},
			}},
		},
		{
			name: "several services and dotted names",
			in: `{"services": {
				"echo": {"endpoints": [{"addr": "a:1", "identity": "` + echoID + `"}]},
				"web-v2.prod": {"endpoints": [{"addr": "a:1", "identity": "` + webID + `", "zone": "b"}]},
				"0db": {"endpoints": []}}}`,
			want: map[string][]discovery.Endpoint{
				"echo":        {{Addr: "a:1", Identity: echoID, Weight: 1}},
				"web-v2.prod": {{Addr: "a:1", Identity: webID, Weight: 1, Zone: "b"}},
				"0db":         {},
			},
		},
		{
			name: "same endpoint in two services is fine",
			in: `{"services": {
				"a": {"endpoints": [{"addr": "h:1", "identity": "` + echoID + `"}]},
				"b": {"endpoints": [{"addr": "h:1", "identity": "` + echoID + `"}]}}}`,
			want: map[string][]discovery.Endpoint{
				"a": {{Addr: "h:1", Identity: echoID, Weight: 1}},
				"b": {{Addr: "h:1", Identity: echoID, Weight: 1}},
			},
		},
		{
			name: "endpoints behind one gateway differ by server name",
			in: one(`{"addr": "gw:4443", "server_name": "e-a.echo.gw.quicmesh.invalid", "identity": "` + echoID + `"},
				{"addr": "gw:4443", "server_name": "e-b.echo.gw.quicmesh.invalid", "identity": "` + echoID + `"}`),
			want: map[string][]discovery.Endpoint{"echo": {
				{Addr: "gw:4443", ServerName: "e-a.echo.gw.quicmesh.invalid", Identity: echoID, Weight: 1},
				{Addr: "gw:4443", ServerName: "e-b.echo.gw.quicmesh.invalid", Identity: echoID, Weight: 1},
			}},
		},
		{
			name: "identity without path",
			in:   one(`{"addr": "a:1", "identity": "spiffe://demo.local"}`),
			want: map[string][]discovery.Endpoint{"echo": {{Addr: "a:1", Identity: "spiffe://demo.local", Weight: 1}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	ep := func(fields string) string {
		return one(`{` + fields + `}`)
	}
	okAddr := `"addr": "127.0.0.1:4143"`
	okID := `"identity": "` + echoID + `"`
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error message
	}{
		{"empty", ``, []string{"empty input"}},
		{"only white space", " \n\t ", []string{"empty input"}},
		{"null", `null`, []string{"the top level must be a JSON object, got null (at $, offset 0)"}},
		{"top-level array", `[]`, []string{"the top level must be a JSON object, got an array"}},
		{"top-level string", `"x"`, []string{"got a string"}},
		{"truncated", `{"services": {`, []string{"invalid JSON: unexpected end of input"}},
		{"syntax error", `{"services": {"echo": {"endpoints": [}]}}}`, []string{"invalid JSON", "invalid character '}'", "offset 37"}},
		{"trailing object", `{} {}`, []string{"unexpected data after the top-level object"}},
		{"trailing garbage", `{}x`, []string{"unexpected data after the top-level object"}},
		{"trailing bracket", `{}]`, []string{"unexpected data after the top-level object"}},
		{"unknown top-level field", `{"servces": {}}`, []string{`unknown field "servces" (at $.servces, offset 10)`}},
		{"duplicate services key", `{"services": {}, "services": {}}`, []string{`duplicate field "services"`}},
		{"services null", `{"services": null}`, []string{"services must be a JSON object, got null"}},
		{"services array", `{"services": []}`, []string{"services must be a JSON object, got an array"}},
		{"service not an object", `{"services": {"echo": []}}`, []string{`service "echo": a service must be a JSON object, got an array`}},
		{"unknown service field", `{"services": {"echo": {"endpoint": []}}}`,
			[]string{`service "echo": unknown field "endpoint" (at $.services["echo"].endpoint, offset`}},
		{"duplicate service", `{"services": {"echo": {}, "echo": {}}}`, []string{`duplicate service "echo" (at $.services["echo"]`}},
		{"endpoints null", `{"services": {"echo": {"endpoints": null}}}`, []string{`service "echo": endpoints must be a JSON array, got null`}},
		{"endpoints object", `{"services": {"echo": {"endpoints": {}}}}`, []string{"endpoints must be a JSON array, got an object"}},
		{"endpoint not an object", one(`"a:1"`), []string{`service "echo": endpoint 0: an endpoint must be a JSON object, got a string`}},

		// Service names.
		{"empty service name", `{"services": {"": {}}}`, []string{`service "": invalid service name: must not be empty (at $.services[""]`}},
		{"upper-case name", `{"services": {"Echo": {}}}`, []string{`service "Echo": invalid service name: must be lower-case`}},
		{"name with port", `{"services": {"echo:80": {}}}`, []string{`service "echo:80": invalid service name: must not contain a port`}},
		{"name with underscore", `{"services": {"my_svc": {}}}`, []string{`invalid service name: invalid character '_' at byte 2`}},
		{"name with space", `{"services": {"my svc": {}}}`, []string{`invalid character ' '`}},
		{"name with slash", `{"services": {"a/b": {}}}`, []string{`invalid character '/'`}},
		{"name with leading dot", `{"services": {".echo": {}}}`, []string{"empty label"}},
		{"name with double dot", `{"services": {"a..b": {}}}`, []string{"empty label"}},
		{"name with trailing dot", `{"services": {"echo.": {}}}`, []string{"empty label"}},
		{"label starts with dash", `{"services": {"-echo": {}}}`, []string{`label "-echo" must not start or end with '-'`}},
		{"label ends with dash", `{"services": {"a.echo-": {}}}`, []string{`label "echo-" must not start or end with '-'`}},
		{"label too long", `{"services": {"` + strings.Repeat("a", 64) + `": {}}}`, []string{"longer than 63 bytes"}},
		{"name too long", `{"services": {"` + strings.Repeat("a.", 127) + `a": {}}}`, []string{"longer than 253 bytes"}},

		// Endpoint fields.
		{"unknown endpoint field", ep(okAddr + `, ` + okID + `, "adr": "x"`),
			[]string{`service "echo": endpoint 0: unknown field "adr" (at $.services["echo"].endpoints[0].adr, offset`}},
		{"unknown field in second endpoint", two(`{"addr": "a:1", "identity": "` + echoID + `", "Zone": "a"}`),
			[]string{`service "echo": endpoint 1: unknown field "Zone"`}},
		{"duplicate endpoint field", ep(okAddr + `, ` + okID + `, "addr": "b:2"`),
			[]string{`service "echo": endpoint 0: duplicate field "addr"`}},
		{"missing addr", ep(okID), []string{`service "echo": endpoint 0: addr is required (at $.services["echo"].endpoints[0], offset`}},
		{"missing addr in second endpoint", two(`{` + okID + `}`), []string{`service "echo": endpoint 1: addr is required`}},
		{"empty addr", ep(`"addr": "", ` + okID), []string{`endpoint 0: addr is required (at $.services["echo"].endpoints[0].addr`}},
		{"addr without port", ep(`"addr": "127.0.0.1", ` + okID), []string{`endpoint 0: invalid addr "127.0.0.1": missing port in address`}},
		{"addr empty host", ep(`"addr": ":4143", ` + okID), []string{`invalid addr ":4143": host must not be empty`}},
		{"addr port zero", ep(`"addr": "h:0", ` + okID), []string{`invalid addr "h:0": port "0" must be a number in 1-65535`}},
		{"addr port too big", ep(`"addr": "h:65536", ` + okID), []string{`port "65536" must be a number in 1-65535`}},
		{"addr port named", ep(`"addr": "h:http", ` + okID), []string{`port "http" must be a number in 1-65535`}},
		{"addr port negative", ep(`"addr": "h:-1", ` + okID), []string{`port "-1" must be a number in 1-65535`}},
		{"addr empty port", ep(`"addr": "h:", ` + okID), []string{`port "" must be a number in 1-65535`}},
		{"addr too many colons", ep(`"addr": "::1:80", ` + okID), []string{`invalid addr "::1:80": too many colons in address`}},
		{"addr is a number", ep(`"addr": 4143, ` + okID), []string{`endpoint 0: addr must be a string, got a number (at $.services["echo"].endpoints[0].addr`}},
		{"addr is null", ep(`"addr": null, ` + okID), []string{"addr must be a string, got null"}},
		{"server_name upper-case", ep(okAddr + `, ` + okID + `, "server_name": "Echo.gw"`),
			[]string{`endpoint 0: invalid server_name "Echo.gw": must be lower-case (at $.services["echo"].endpoints[0].server_name`}},
		{"server_name empty", ep(okAddr + `, ` + okID + `, "server_name": ""`), []string{`invalid server_name "": must not be empty`}},
		{"server_name with port", ep(okAddr + `, ` + okID + `, "server_name": "a.b:1"`), []string{`invalid server_name "a.b:1": must not contain a port`}},
		{"server_name with at", ep(okAddr + `, ` + okID + `, "server_name": "a@b"`), []string{`invalid server_name "a@b": invalid character '@'`}},
		{"same gateway and server name twice", one(`{"addr": "gw:1", "server_name": "x.gw", ` + okID + `}, {"addr": "gw:1", "server_name": "x.gw", ` + okID + `}`),
			[]string{`endpoint 1: duplicate endpoint`}},
		{"missing identity", ep(okAddr), []string{`service "echo": endpoint 0: identity is required`}},
		{"empty identity", ep(okAddr + `, "identity": ""`), []string{`endpoint 0: identity is required (at $.services["echo"].endpoints[0].identity`}},
		{"identity not spiffe", ep(okAddr + `, "identity": "https://demo.local/x"`),
			[]string{`endpoint 0: invalid identity "https://demo.local/x": must start with "spiffe://"`}},
		{"identity upper-case scheme", ep(okAddr + `, "identity": "SPIFFE://demo.local/x"`), []string{`must start with "spiffe://"`}},
		{"identity prefix only", ep(okAddr + `, "identity": "spiffe://"`), []string{`invalid identity "spiffe://": missing trust domain`}},
		{"identity empty trust domain", ep(okAddr + `, "identity": "spiffe:///ns/x"`), []string{"missing trust domain"}},
		{"identity with space", ep(okAddr + `, "identity": "spiffe://demo.local/a b"`), []string{"must not contain whitespace"}},
		{"identity is an object", ep(okAddr + `, "identity": {}`), []string{"identity must be a string, got an object"}},
		{"weight negative", ep(okAddr + `, ` + okID + `, "weight": -1`), []string{`endpoint 0: weight must be an integer in 0-4294967295, got -1`}},
		{"weight fraction", ep(okAddr + `, ` + okID + `, "weight": 1.5`), []string{"weight must be an integer in 0-4294967295, got 1.5"}},
		{"weight too big", ep(okAddr + `, ` + okID + `, "weight": 4294967296`), []string{"got 4294967296"}},
		{"weight string", ep(okAddr + `, ` + okID + `, "weight": "1"`), []string{"weight must be an integer in 0-4294967295, got a string"}},
		{"zone number", ep(okAddr + `, ` + okID + `, "zone": 1`), []string{"zone must be a string, got a number"}},
		{"metadata array", ep(okAddr + `, ` + okID + `, "metadata": []`), []string{"metadata must be a JSON object, got an array"}},
		{"metadata number value", ep(okAddr + `, ` + okID + `, "metadata": {"k": 1}`),
			[]string{`endpoint 0: metadata value must be a string, got a number (at $.services["echo"].endpoints[0].metadata["k"]`}},
		{"metadata null value", ep(okAddr + `, ` + okID + `, "metadata": {"k": null}`), []string{"metadata value must be a string, got null"}},
		{"metadata duplicate key", ep(okAddr + `, ` + okID + `, "metadata": {"k": "a", "k": "b"}`), []string{`duplicate metadata key "k"`}},
		{"duplicate endpoint", two(`{"addr": "10.0.0.1:4143", "identity": "` + echoID + `", "zone": "b"}`),
			[]string{`service "echo": endpoint 1: duplicate endpoint: same addr "10.0.0.1:4143" and identity "` + echoID + `" as endpoint 0`}},
		{"second service named in error", `{"services": {"a": {"endpoints": []}, "b": {"endpoints": [{"addr": "x"}]}}}`,
			[]string{`service "b": endpoint 0: invalid addr "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded with %#v, want error containing %q", got, tt.want)
			}
			if got != nil {
				t.Errorf("Parse returned data %#v along with error", got)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *ParseError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %v\ndoes not contain\n  %s", err, w)
				}
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	// The size is checked before anything is decoded, so the content of
	// the oversized input does not matter.
	data := make([]byte, MaxFileSize+1)
	copy(data, `{"services": {}}`)
	_, err := Parse(data)
	if err == nil || !strings.Contains(err.Error(), "input is 16777217 bytes, exceeds maximum size of 16777216 bytes") {
		t.Fatalf("Parse = %v", err)
	}
}

func TestParseErrorFields(t *testing.T) {
	_, err := Parse([]byte(two(`{"addr": "10.0.0.2:0", "identity": "` + echoID + `"}`)))
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a *ParseError", err)
	}
	if pe.Service != "echo" || pe.Endpoint != 1 || pe.Path != `$.services["echo"].endpoints[1].addr` || pe.Offset <= 0 {
		t.Errorf("ParseError = %+v", *pe)
	}
	_, err = Parse([]byte(`{"x": 1}`))
	if !errors.As(err, &pe) || pe.Service != "" || pe.Endpoint != -1 || pe.Path != "$.x" || pe.Offset != 4 {
		t.Errorf("ParseError = %+v", *pe)
	}
	if strings.Contains(err.Error(), "service") {
		t.Errorf("top-level error %q mentions a service", err)
	}
}
