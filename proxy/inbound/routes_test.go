package inbound

import (
	"strings"
	"testing"
)

func TestRoutesLookup(t *testing.T) {
	r := Routes{"web": "127.0.0.1:1", "web:8080": "127.0.0.1:2", "db": "tcp://127.0.0.1:3"}
	tests := []struct {
		target, want string
		ok           bool
	}{
		{"web", "127.0.0.1:1", true},
		{"web:8080", "127.0.0.1:2", true},
		{"web:9090", "127.0.0.1:1", true},
		{"db:5432", "tcp://127.0.0.1:3", true},
		{"nosuch", "", false},
		{"nosuch:80", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := r.Lookup(tt.target)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Lookup(%q) = %q, %v; want %q, %v", tt.target, got, ok, tt.want, tt.ok)
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
