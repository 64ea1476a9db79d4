package transport

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// deadlineRecorder is a ResponseWriter with SetReadDeadline, as quic-go's.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (d *deadlineRecorder) SetReadDeadline(t time.Time) error {
	d.deadlines = append(d.deadlines, t)
	return nil
}

// endedBodies: io.EOF at once means http.NoBody; any other answer leaves
// the body whole, a byte read anyway included; the deadline is cleared.
func TestEndedBodiesLook(t *testing.T) {
	tests := []struct {
		name       string
		body       io.Reader
		length     int64
		wantNoBody bool
		want       string
	}{
		{"ended", strings.NewReader(""), -1, true, ""},
		{"a byte comes back", strings.NewReader("abc"), -1, false, "abc"},
		{"not yet (deadline error)", iotestTimeout{}, -1, false, ""},
		{"declared length", strings.NewReader("abc"), 3, false, "abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
			r := httptest.NewRequest("GET", "/", nil)
			r.Body, r.ContentLength = io.NopCloser(tt.body), tt.length
			var got *http.Request
			endedBodies(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r })).ServeHTTP(w, r)
			if (got.Body == http.NoBody) != tt.wantNoBody {
				t.Fatalf("NoBody %v, want %v", got.Body == http.NoBody, tt.wantNoBody)
			}
			if tt.wantNoBody && got.ContentLength != 0 {
				t.Errorf("ContentLength %d with NoBody", got.ContentLength)
			}
			if _, ok := tt.body.(iotestTimeout); !ok {
				b, err := io.ReadAll(got.Body)
				if err != nil || string(b) != tt.want {
					t.Errorf("body %q, %v; want %q", b, err, tt.want)
				}
			}
			if tt.length <= 0 && (len(w.deadlines) != 2 || !w.deadlines[1].IsZero()) {
				t.Errorf("read deadlines set %v, want a past one then none", w.deadlines)
			}
		})
	}
}

// iotestTimeout fails every read as a passed deadline does.
type iotestTimeout struct{}

func (iotestTimeout) Read([]byte) (int, error) { return 0, errDeadlineForTest }

var errDeadlineForTest = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string { return "deadline exceeded" }
func (*timeoutError) Timeout() bool { return true }
