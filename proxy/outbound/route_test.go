package outbound

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRoute(t *testing.T) {
	tests := []struct {
		bound, method, target, host string
		service, authority          string
		bad                         bool
	}{
		{"web", "GET", "/x", "anything:1", "web", "anything:1", false},
		{"", "GET", "/x", "web.ns:8080", "web.ns", "web.ns:8080", false},
		{"", "GET", "http://api:9000/x", "ignored", "api", "api:9000", false},
		{"", "CONNECT", "db:5432", "db:5432", "db", "db:5432", false},
		{"", "GET", "/x", "bare", "bare", "bare", false},
		// A listener bound to a service needs no authority to route.
		{"web", "GET", "/x", "", "web", "", false},
		// The proxy listener routes by authority: without one it must refuse.
		{"", "GET", "/x", "", "", "", true},
	}
	for _, tt := range tests {
		rt := router{bound: tt.bound}
		r := httptest.NewRequest(tt.method, tt.target, nil)
		r.Host = tt.host
		got, err := rt.route(r)
		svc, auth := got.service, got.authority
		if (err != nil) != tt.bad || svc != tt.service || auth != tt.authority {
			t.Errorf("route(%s %s Host %q, bound %q) = %q, %q, %v; want %q, %q, error %v", tt.method, tt.target, tt.host, tt.bound, svc, auth, err, tt.service, tt.authority, tt.bad)
		}
		if tt.bad && (err == nil || !strings.Contains(err.Error(), "no authority")) {
			t.Errorf("route(%s %s Host %q, bound %q): error %v, want one saying there is no authority", tt.method, tt.target, tt.host, tt.bound, err)
		}
	}
}

func TestIsUpgrade(t *testing.T) {
	tests := []struct {
		conn, upgrade string
		major         int
		want          bool
	}{
		{"Upgrade", "websocket", 1, true},
		{"keep-alive, upgrade", "websocket", 1, true},
		{"keep-alive", "websocket", 1, false},
		{"Upgrade", "", 1, false},
		{"Upgrade", "websocket", 2, false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.ProtoMajor = tt.major
		r.Header.Set("Connection", tt.conn)
		if tt.upgrade != "" {
			r.Header.Set("Upgrade", tt.upgrade)
		}
		if got := isUpgrade(r); got != tt.want {
			t.Errorf("isUpgrade(Connection %q, Upgrade %q, HTTP/%d) = %v", tt.conn, tt.upgrade, tt.major, got)
		}
	}
}

// The router hands each kind of request to its path, with its target.
func TestRouterDispatch(t *testing.T) {
	tests := []struct {
		name        string
		method, url string
		major       int
		upgrade     bool
		bound       string
		want        string // the path taken: requests, connect, upgrade or "" (answered by the router)
		wantTarget  target
		wantStatus  int
	}{
		{name: "request", method: "GET", url: "http://web:80/x", major: 1, want: "requests", wantTarget: target{service: "web", authority: "web:80"}},
		{name: "h2 request", method: "GET", url: "/x", major: 2, bound: "web", want: "requests", wantTarget: target{service: "web", authority: "example.com"}},
		{name: "CONNECT", method: "CONNECT", url: "db:5432", major: 1, want: "connect", wantTarget: target{service: "db", authority: "db:5432"}},
		{name: "CONNECT over h2", method: "CONNECT", url: "db:5432", major: 2, wantStatus: http.StatusBadGateway},
		// An upgrade reaches the service's app itself; the request is
		// replayed in the tunnel.
		{name: "upgrade", method: "GET", url: "http://chat:8080/ws", major: 1, upgrade: true, want: "upgrade", wantTarget: target{service: "chat", authority: "chat"}},
		{name: "no authority", method: "GET", url: "/x", major: 1, wantStatus: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var took string
			var got target
			path := func(name string) routed {
				return func(w http.ResponseWriter, r *http.Request, t target) { took, got = name, t }
			}
			rt := router{bound: tt.bound, who: "outbound test", connect: path("connect"), upgrade: path("upgrade"),
				requests: stageFunc(func(w http.ResponseWriter, r *http.Request, t target) outcome {
					took, got = "requests", t
					return outcome{}
				})}
			r := httptest.NewRequest(tt.method, tt.url, nil)
			if !strings.HasPrefix(tt.url, "http") && tt.method != "CONNECT" {
				r.Host = ""
				if tt.bound != "" {
					r.Host = "example.com"
				}
			}
			r.ProtoMajor = tt.major
			if tt.upgrade {
				r.Header.Set("Connection", "Upgrade")
				r.Header.Set("Upgrade", "websocket")
			}
			rec := httptest.NewRecorder()
			rt.ServeHTTP(rec, r)
			if took != tt.want || got.service != tt.wantTarget.service || got.authority != tt.wantTarget.authority {
				t.Fatalf("took path %q with %+v, want %q with %+v", took, got, tt.want, tt.wantTarget)
			}
			if tt.want == "" && rec.Code != tt.wantStatus {
				t.Fatalf("router answered %d, want %d", rec.Code, tt.wantStatus)
			}
		})
	}
}
