package h2client

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRequestWithBodyRetriedWhenConnectionClosesBeforeItsStream: a
// connection that starts going away between the reservation of a slot
// and the request's HEADERS has read nothing of the body, so the request
// goes on another connection instead of failing as unprocessed; a body
// that is not retried is closed (the RoundTripper contract).
func TestRequestWithBodyRetriedWhenConnectionClosesBeforeItsStream(t *testing.T) {
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	}), 100)
	for _, tc := range []struct {
		name     string
		goAways  int32 // connections marked going away before the HEADERS
		wantBody bool  // the request succeeds
	}{
		{"once", 1, true},
		{"on every attempt", 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dials, marked atomic.Int32
			c := newClient(t, Config{Dial: func(ctx context.Context, network, a string) (net.Conn, error) {
				dials.Add(1)
				return (&net.Dialer{}).DialContext(ctx, network, a)
			}})
			c.testHookReserved = func(cc *conn) {
				if marked.Add(1) <= tc.goAways {
					cc.mu.Lock()
					cc.goAway = true
					cc.mu.Unlock()
				}
			}
			body := &closeCounter{Reader: strings.NewReader("payload")}
			resp, err := c.RoundTrip(request(t, t.Context(), http.MethodPost, "http://"+addr+"/", body))
			if !tc.wantBody {
				if err == nil {
					resp.Body.Close()
					t.Fatal("request succeeded although every connection was going away")
				}
				if body.closed.Load() != 1 {
					t.Fatalf("body closed %d times, want 1", body.closed.Load())
				}
				return
			}
			if err != nil {
				t.Fatalf("request failed: %v (dials %d)", err, dials.Load())
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(got, []byte("payload")) {
				t.Fatalf("response %q, %v", got, err)
			}
			if dials.Load() != 2 {
				t.Fatalf("%d dials, want 2 (the retry on a new connection)", dials.Load())
			}
		})
	}
}

type closeCounter struct {
	io.Reader
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }
