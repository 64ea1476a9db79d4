package sidecar_test

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/quicmesh/quicmesh/internal/testkit"
	"github.com/quicmesh/quicmesh/internal/testkit/meshtest"
)

// An app that sends 103 Early Hints and reads request trailers: both must
// cross the mesh.
func TestInformationalResponsesAndRequestTrailers(t *testing.T) {
	m := meshtest.New(t)
	app := m.HTTPApp("hints", meshtest.H1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		body, _ := io.ReadAll(r.Body)
		w.Header().Del("Link")
		w.Header().Set("Got-Trailer", r.Trailer.Get("Checksum"))
		w.Write(body)
	}))
	m.Start("server", meshtest.Spec{ID: echoID, Routes: map[string]string{"hints": app.URL("http")}})
	client := m.Start("client", meshtest.Spec{ID: clientID, Binds: []meshtest.Bind{{Service: "hints"}}, ClientsSpeakFirst: true})

	var mu sync.Mutex
	var early []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		early = append(early, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequest("POST", "http://"+client.Bind("hints")+"/", io.NopCloser(strings.NewReader("payload")))
	req.ContentLength = -1 // chunked, so trailers can follow
	req.Trailer = http.Header{"Checksum": {"abc123"}}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := testkit.H1Client(t).Do(req)
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
