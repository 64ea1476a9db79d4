package outbound

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/bridge"
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
		f := &httpFront{service: tt.bound}
		r := httptest.NewRequest(tt.method, tt.target, nil)
		r.Host = tt.host
		svc, auth, err := f.route(r)
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

func TestConnectErrorKind(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-expired.Done()
	tests := []struct {
		ctx  context.Context
		err  error
		want bridge.ErrorKind
	}{
		{context.Background(), fmt.Errorf("x: %w", discovery.ErrUnknownService), bridge.Unavailable},
		{context.Background(), fmt.Errorf("x: %w", discovery.ErrNoEndpoints), bridge.Unavailable},
		{expired, errors.New("dial: context deadline exceeded"), bridge.Timeout},
		{context.Background(), fmt.Errorf("%w: handshake timeout", ErrNoRoute), bridge.BadGateway},
	}
	for _, tt := range tests {
		if got := connectErrorKind(tt.ctx, tt.err); got != tt.want {
			t.Errorf("connectErrorKind(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestBodyless(t *testing.T) {
	get := httptest.NewRequest("GET", "/", nil)
	post := httptest.NewRequest("POST", "/", strings.NewReader("hello"))
	chunked := httptest.NewRequest("POST", "/", strings.NewReader("hello"))
	chunked.ContentLength = -1
	chunked.TransferEncoding = []string{"chunked"}
	empty := httptest.NewRequest("POST", "/", strings.NewReader(""))
	if !bodyless(get) || bodyless(post) || bodyless(chunked) || !bodyless(empty) {
		t.Errorf("bodyless: GET %v, POST %v, chunked %v, empty POST %v", bodyless(get), bodyless(post), bodyless(chunked), bodyless(empty))
	}
}
