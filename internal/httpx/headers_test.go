package httpx

import (
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

func TestRemoveHopByHop(t *testing.T) {
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "nil",
			in:   nil,
			want: nil,
		},
		{
			name: "end-to-end fields untouched",
			in:   http.Header{"Content-Type": {"text/plain"}, "Accept": {"*/*"}, "Trailer": {"X-Sum"}},
			want: http.Header{"Content-Type": {"text/plain"}, "Accept": {"*/*"}, "Trailer": {"X-Sum"}},
		},
		{
			name: "fixed hop-by-hop list",
			in: http.Header{
				"Connection":          {"keep-alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Connection":    {"keep-alive"},
				"Proxy-Authenticate":  {"Basic"},
				"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
				"Te":                  {"gzip"},
				"Transfer-Encoding":   {"chunked"},
				"Upgrade":             {"websocket"},
				"Authorization":       {"Bearer x"},
			},
			want: http.Header{"Authorization": {"Bearer x"}},
		},
		{
			name: "fields named by Connection",
			in: http.Header{
				"Connection": {"X-Foo, x-bar", " X-Baz\t,,"},
				"X-Foo":      {"1"},
				"X-Bar":      {"2"},
				"X-Baz":      {"3"},
				"X-Keep":     {"4"},
			},
			want: http.Header{"X-Keep": {"4"}},
		},
		{
			name: "several Connection fields",
			in:   http.Header{"Connection": {"X-A"}, "connection": {"X-B"}, "X-A": {"1"}, "X-B": {"2"}},
			want: http.Header{},
		},
		{
			name: "TE trailers kept",
			in:   http.Header{"Te": {"trailers"}},
			want: http.Header{"Te": {"trailers"}},
		},
		{
			name: "TE trailers kept even when Connection names TE",
			in:   http.Header{"Te": {"trailers"}, "Connection": {"TE"}},
			want: http.Header{"Te": {"trailers"}},
		},
		{
			name: "TE with other codings reduced to trailers",
			in:   http.Header{"Te": {"deflate;q=0.5, Trailers"}},
			want: http.Header{"Te": {"trailers"}},
		},
		{
			name: "TE without trailers removed",
			in:   http.Header{"Te": {"gzip, deflate"}},
			want: http.Header{},
		},
		{
			name: "non-canonical keys",
			in:   http.Header{"connection": {"x-secret"}, "X-SECRET": {"1"}, "upgrade": {"h2c"}, "te": {"trailers"}, "transfer-ENCODING": {"chunked"}},
			want: http.Header{"Te": {"trailers"}},
		},
		{
			name: "Connection may name end-to-end fields (RFC 9110 says remove them)",
			in:   http.Header{"Connection": {"Authorization"}, "Authorization": {"x"}},
			want: http.Header{},
		},
		{
			name: "long Connection list",
			in: func() http.Header {
				h := http.Header{"Connection": {strings.Repeat("x-a, ", 50) + "X-Last"}, "X-Last": {"1"}, "X-A": {"2"}, "X-Other": {"3"}}
				return h
			}(),
			want: http.Header{"X-Other": {"3"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			RemoveHopByHop(tt.in)
			if len(tt.in) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(tt.in, tt.want) {
				t.Errorf("got %v, want %v", tt.in, tt.want)
			}
		})
	}
}

func TestRemoveHopByHopDoesNotMutateSharedConnectionValues(t *testing.T) {
	shared := []string{"X-A"}
	h := http.Header{"Connection": shared[:1:1], "connection": {"X-B"}}
	RemoveHopByHop(h)
	if shared[0] != "X-A" {
		t.Fatal("Connection value slice modified")
	}
}

func TestStripMeshHeaders(t *testing.T) {
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "mesh fields removed, others kept",
			in: http.Header{
				HeaderPeerIdentity:   {"spiffe://evil/ns/x/sa/y"},
				HeaderProxyError:     {"x"},
				HeaderProxy:          {"x"},
				"Quicmesh-Anything":  {"x"},
				"quicmesh-lowercase": {"x"},
				"X-Quicmesh-Not":     {"kept"},
				"Quicmesh":           {"kept: no dash"},
				"Content-Type":       {"text/plain"},
			},
			want: http.Header{"X-Quicmesh-Not": {"kept"}, "Quicmesh": {"kept: no dash"}, "Content-Type": {"text/plain"}},
		},
		{
			name: "mesh names dropped from Connection",
			in:   http.Header{"Connection": {"Quicmesh-Peer-Identity, keep-alive", "quicmesh-proxy"}},
			want: http.Header{"Connection": {"keep-alive"}},
		},
		{
			name: "Connection naming only mesh fields removed",
			in:   http.Header{"Connection": {"Quicmesh-Peer-Identity"}},
			want: http.Header{},
		},
		{
			name: "Connection without mesh names untouched",
			in:   http.Header{"Connection": {"X-A ,  X-B"}},
			want: http.Header{"Connection": {"X-A ,  X-B"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			StripMeshHeaders(tt.in)
			if !reflect.DeepEqual(tt.in, tt.want) {
				t.Errorf("got %v, want %v", tt.in, tt.want)
			}
		})
	}
}

// The attack StripMeshHeaders' Connection rewrite prevents: a sidecar strips,
// adds its own identity, and a later RemoveHopByHop must not delete it.
func TestConnectionCannotRemoveSidecarIdentity(t *testing.T) {
	h := http.Header{"Connection": {"Quicmesh-Peer-Identity"}}
	StripMeshHeaders(h)
	h.Set(HeaderPeerIdentity, "spiffe://example.org/ns/a/sa/b")
	RemoveHopByHop(h)
	if got := h.Get(HeaderPeerIdentity); got != "spiffe://example.org/ns/a/sa/b" {
		t.Fatalf("identity = %q after RemoveHopByHop", got)
	}
}

func TestIsMeshHeaderIsHopByHop(t *testing.T) {
	mesh := map[string]bool{
		"Quicmesh-Peer-Identity": true, "QUICMESH-X": true, "quicmesh-": true,
		"Quicmesh": false, "X-Quicmesh-A": false, "": false, "Quicmesh_A": false,
	}
	for name, want := range mesh {
		if got := IsMeshHeader(name); got != want {
			t.Errorf("IsMeshHeader(%q) = %v, want %v", name, got, want)
		}
	}
	hop := map[string]bool{
		"connection": true, "KEEP-ALIVE": true, "Te": true, "TE": true, "Upgrade": true,
		"Proxy-Authorization": true, "Trailer": false, "Content-Length": false, "Connectio": false,
	}
	for name, want := range hop {
		if got := IsHopByHop(name); got != want {
			t.Errorf("IsHopByHop(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestCopyHeader(t *testing.T) {
	src := http.Header{"A": {"1", "2"}, "B": {"3"}}
	dst := http.Header{"A": {"0"}, "C": {"4"}}
	CopyHeader(dst, src)
	want := http.Header{"A": {"0", "1", "2"}, "B": {"3"}, "C": {"4"}}
	if !reflect.DeepEqual(dst, want) {
		t.Fatalf("got %v, want %v", dst, want)
	}
	dst["B"][0] = "changed"
	if src["B"][0] != "3" {
		t.Fatal("CopyHeader shares value slices with src")
	}
}

func TestWriteTrailers(t *testing.T) {
	trailers := http.Header{
		"Grpc-Status":        {"0"},
		"grpc-message":       {"ok"},
		"Content-Length":     {"4"},
		"Quicmesh-Proxy":     {"x"},
		"Connection":         {"close"},
		"Bad Name":           {"x"},
		"X-Empty-Never-Sent": {},
	}
	tests := []struct {
		name     string
		announce bool
		flush    bool
		http2    bool
	}{
		{name: "http/1.1 announced", announce: true},
		{name: "http/1.1 flushed", flush: true},
		{name: "http/2 unannounced", http2: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.announce {
					AnnounceTrailers(w.Header(), trailers)
				}
				io.WriteString(w, "body")
				if tt.flush {
					w.(http.Flusher).Flush()
				}
				WriteTrailers(w, trailers)
			}))
			srv.EnableHTTP2 = tt.http2
			if tt.http2 {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if tt.http2 != (resp.ProtoMajor == 2) {
				t.Fatalf("proto = %s", resp.Proto)
			}
			want := http.Header{"Grpc-Status": {"0"}, "Grpc-Message": {"ok"}}
			if !reflect.DeepEqual(resp.Trailer, want) {
				t.Fatalf("trailers = %v, want %v", resp.Trailer, want)
			}
		})
	}
}

// The wire names are the canonical ones in lower case: the far side's
// quic-go canonicalises them back, so it reads what the Header*
// constants name, and they are mesh fields like those.
func TestWireNames(t *testing.T) {
	for wire, canonical := range map[string]string{
		WireService:   HeaderService,
		WireOrigProto: HeaderOrigProto,
		WireDestPort:  HeaderDestPort,
	} {
		if strings.ToLower(canonical) != wire || http.CanonicalHeaderKey(wire) != canonical || !IsMeshHeader(wire) {
			t.Errorf("%q is not %q in lower case, or not a mesh field", wire, canonical)
		}
	}
}
