package h2client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

var (
	errBodyCancelled = errors.New("test: request body cancelled (closed)")
	errBodyBroken    = errors.New("test: request body broken")
)

// stallBody is a request body whose Read blocks until it is closed,
// failing then as quic-go's HTTP/3 request body does (Close cancels
// the stream's read side: H3_REQUEST_CANCELLED, local), or until the
// test breaks it.
type stallBody struct {
	once   sync.Once
	closed chan struct{}
	broken chan struct{}
}

func newStallBody() *stallBody {
	return &stallBody{closed: make(chan struct{}), broken: make(chan struct{})}
}

func (b *stallBody) Read([]byte) (int, error) {
	select {
	case <-b.closed:
		return 0, errBodyCancelled
	case <-b.broken:
		return 0, errBodyBroken
	}
}

func (b *stallBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// TestRequestBodyFailsAfterResponse covers a request body whose read
// fails while or after the response arrives, as net/http's HTTP/2
// transport treats it: a failure the stream caused itself (it closed
// the body on the app's RST_STREAM(NO_ERROR) after a complete
// response: the race TestStalledH1ReadersIsolated's probe lost) or one
// after the whole response arrived leaves the response intact; a body
// that breaks while the response is still coming fails the request.
func TestRequestBodyFailsAfterResponse(t *testing.T) {
	tests := []struct {
		name string
		// rstNo: the app resets the stream with NO_ERROR after its
		// complete response; complete: the response has END_STREAM.
		rstNo, complete bool
		wantErr         string // "" for the whole response
		wantRST         http2.ErrCode
	}{
		{name: "app's RST_STREAM(NO_ERROR) closes the body", rstNo: true, complete: true},
		{name: "body breaks after the complete response", complete: true, wantRST: http2.ErrCodeCancel},
		{name: "body breaks during the response", wantErr: "reading request body", wantRST: http2.ErrCodeCancel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			responded := make(chan struct{}) // the client has read the app's response frames
			gotRST := make(chan http2.ErrCode, 1)
			addr := rawApp(t, func(i int, fr *http2.Framer, enc func(...string) []byte) {
				h, err := readHeaders(fr)
				if err != nil {
					return
				}
				if h.StreamEnded() {
					t.Error("HEADERS of a request with a body have END_STREAM")
				}
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: enc(":status", "200")})
				fr.WriteData(h.StreamID, tt.complete, []byte("hello"))
				if tt.rstNo {
					fr.WriteRSTStream(h.StreamID, http2.ErrCodeNo)
				}
				// The client's read loop takes frames in order: once it
				// has acked this PING, it has seen the response.
				fr.WritePing(false, [8]byte{})
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.PingFrame:
						if f.IsAck() {
							close(responded)
						}
					case *http2.RSTStreamFrame:
						gotRST <- f.ErrCode
					}
				}
			})
			c := newClient(t, Config{})
			bodyDone := make(chan struct{})
			c.testHookBodyDone = func() { close(bodyDone) }
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			body := newStallBody()
			req := request(t, ctx, "POST", "http://"+addr+"/", body)
			req.ContentLength = -1 // as a server's request of unknown length
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			<-responded
			if !tt.rstNo {
				close(body.broken)
			}
			<-bodyDone // the body goroutine has seen its read fail
			got, err := io.ReadAll(resp.Body)
			switch {
			case tt.wantErr == "" && (err != nil || string(got) != "hello"):
				t.Fatalf("response %q, %v; want %q, nil", got, err, "hello")
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("response error %v, want %q", err, tt.wantErr)
			}
			select {
			case <-body.closed:
			default:
				t.Error("request body not closed")
			}
			if tt.wantRST != 0 {
				select {
				case code := <-gotRST:
					if code != tt.wantRST {
						t.Errorf("RST_STREAM %v, want %v", code, tt.wantRST)
					}
				case <-ctx.Done():
					t.Fatal("no RST_STREAM")
				}
			}
			if ctx.Err() != nil {
				t.Fatal("ended by the test's deadline")
			}
		})
	}
}

// TestNoBodyEndsWithHeaders checks that a request without a body (nil,
// http.NoBody) goes out as HEADERS with END_STREAM, and one with a body
// of length 0 (unknown, for a client) or -1 without.
func TestNoBodyEndsWithHeaders(t *testing.T) {
	tests := []struct {
		name          string
		body          func() io.ReadCloser
		contentLength int64
		wantEnd       bool
	}{
		{"nil", func() io.ReadCloser { return nil }, 0, true},
		{"NoBody", func() io.ReadCloser { return http.NoBody }, 0, true},
		// As in net/http's client: 0 on a body means unknown.
		{"Content-Length 0 on a body", func() io.ReadCloser { return io.NopCloser(strings.NewReader("x")) }, 0, false},
		{"unknown length", func() io.ReadCloser { return io.NopCloser(strings.NewReader("x")) }, -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ended := make(chan bool, 1)
			addr := rawApp(t, func(i int, fr *http2.Framer, enc func(...string) []byte) {
				h, err := readHeaders(fr)
				if err != nil {
					return
				}
				ended <- h.StreamEnded()
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true, BlockFragment: enc(":status", "204")})
				for {
					if _, err := fr.ReadFrame(); err != nil {
						return
					}
				}
			})
			c := newClient(t, Config{})
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			req := request(t, ctx, "GET", "http://"+addr+"/", nil)
			body := tt.body()
			req.Body, req.ContentLength = body, tt.contentLength
			resp, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := <-ended; got != tt.wantEnd {
				t.Errorf("END_STREAM on HEADERS: %v, want %v", got, tt.wantEnd)
			}
		})
	}
}
