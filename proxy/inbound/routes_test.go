package inbound

import (
	"strings"
	"testing"
)

// Routes are parsed once; a lookup tries the exact target, then the name
// without its port.
func TestRouteTableLookup(t *testing.T) {
	table, err := parseRoutes(Routes{"web": "127.0.0.1:1", "web:8080": "h2c://127.0.0.1:2", "db": "tcp://127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target string
		want   route
		ok     bool
	}{
		{"web", route{"web", ProtoAuto, "127.0.0.1:1"}, true},
		{"web:8080", route{"web:8080", ProtoH2C, "127.0.0.1:2"}, true},
		{"web:9090", route{"web", ProtoAuto, "127.0.0.1:1"}, true},
		{"db:5432", route{"db", ProtoTCP, "127.0.0.1:3"}, true},
		{"nosuch", route{}, false},
		{"nosuch:80", route{}, false},
		{"", route{}, false},
	}
	for _, tt := range tests {
		got, ok := table.lookup(tt.target)
		if got != tt.want || ok != tt.ok {
			t.Errorf("lookup(%q) = %+v, %v; want %+v, %v", tt.target, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseRoutes(t *testing.T) {
	tests := []struct {
		routes Routes
		err    string // "" for none
	}{
		{nil, ""},
		{Routes{"web": "http://127.0.0.1:80", "db": "tcp://[::1]:5432"}, ""},
		{Routes{"web": "ftp://127.0.0.1:21"}, `route for "web": route "ftp://127.0.0.1:21": unknown app protocol "ftp"`},
		{Routes{"db": "127.0.0.1"}, `route for "db": route "127.0.0.1": app address`},
	}
	for _, tt := range tests {
		table, err := parseRoutes(tt.routes)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseRoutes(%v) err = %v, want %q", tt.routes, err, tt.err)
			}
			continue
		}
		if err != nil || len(table) != len(tt.routes) {
			t.Errorf("parseRoutes(%v) = %v, %v", tt.routes, table, err)
		}
	}
}

func TestParseAppAddr(t *testing.T) {
	tests := []struct {
		in, proto, addr, err string
	}{
		{"127.0.0.1:80", ProtoAuto, "127.0.0.1:80", ""},
		{"http://127.0.0.1:80", ProtoHTTP, "127.0.0.1:80", ""},
		{"h2c://[::1]:9090", ProtoH2C, "[::1]:9090", ""},
		{"tcp://localhost:5432", ProtoTCP, "localhost:5432", ""},
		{"ftp://127.0.0.1:21", "", "", "unknown app protocol"},
		{"127.0.0.1", "", "", "app address"},
		{"http://", "", "", "app address"},
	}
	for _, tt := range tests {
		proto, addr, err := ParseAppAddr(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseAppAddr(%q) err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || proto != tt.proto || addr != tt.addr {
			t.Errorf("ParseAppAddr(%q) = %q, %q, %v; want %q, %q", tt.in, proto, addr, err, tt.proto, tt.addr)
		}
	}
}
