package sidecar_test

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity/identitytest"
	"github.com/quicmesh/quicmesh/proxy/inbound"
	"github.com/quicmesh/quicmesh/proxy/outbound"
	"github.com/quicmesh/quicmesh/proxy/sidecar"
)

// An app that sends 103 Early Hints and reads request trailers: both must
// cross the mesh.
func TestInformationalResponsesAndRequestTrailers(t *testing.T) {
	checkLeaks(t)
	ca := identitytest.NewCA(t, "test.local")
	ln := listen(t)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		body, _ := io.ReadAll(r.Body)
		w.Header().Del("Link")
		w.Header().Set("Got-Trailer", r.Trailer.Get("Checksum"))
		w.Write(body)
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	server, err := sidecar.Start(sidecar.Config{
		Identity: identitytest.Provider(t, ca, echoID), Resolver: staticMap(t, nil), InboundAddr: "127.0.0.1:0",
		Routes: inbound.Routes{"hints": "http://" + ln.Addr().String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	client, err := sidecar.Start(sidecar.Config{
		Identity: identitytest.Provider(t, ca, clientID), InboundAddr: "127.0.0.1:0",
		Resolver: staticMap(t, map[string][]discovery.Endpoint{"hints": {{Addr: server.InboundAddr().String(), Identity: echoID}}}),
		Binds:    []sidecar.Bind{{Listen: "127.0.0.1:0", Service: "hints"}},
		Outbound: outbound.Config{Detect: clientsSpeakFirst(t)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	var mu sync.Mutex
	var early []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		early = append(early, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequest("POST", "http://"+client.BindAddr(0).String()+"/", io.NopCloser(strings.NewReader("payload")))
	req.ContentLength = -1 // chunked, so trailers can follow
	req.Trailer = http.Header{"Checksum": {"abc123"}}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := h1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "payload" {
		t.Fatalf("body %q", body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(early) != 1 || early[0] != "</style.css>; rel=preload" {
		t.Fatalf("103 Early Hints seen by the client: %q", early)
	}
	if got := resp.Header.Get("Got-Trailer"); got != "abc123" {
		t.Fatalf("app saw request trailer %q, want abc123", got)
	}
}
