package static

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const poll = 20 * time.Millisecond

func testLogger(t *testing.T) (*slog.Logger, *testkit.LogBuffer) {
	logs := &testkit.LogBuffer{}
	return logs.Logger(slog.LevelDebug), logs
}

func ep(addr string) discovery.Endpoint {
	return discovery.Endpoint{Addr: addr, Identity: echoID, Weight: 1}
}

// fileWith renders a file serving the given services.
func fileWith(services map[string][]string) string {
	var parts []string
	for name, addrs := range services {
		var eps []string
		for _, a := range addrs {
			eps = append(eps, fmt.Sprintf(`{"addr": %q, "identity": %q}`, a, echoID))
		}
		parts = append(parts, fmt.Sprintf(`%q: {"endpoints": [%s]}`, name, strings.Join(eps, ", ")))
	}
	return `{"services": {` + strings.Join(parts, ", ") + `}}`
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write and rename so the poller never sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newFileResolver(t *testing.T, content string) (*Resolver, string, *testkit.LogBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "endpoints.json")
	writeFile(t, path, content)
	logger, logs := testLogger(t)
	r, err := New(path, Options{PollInterval: poll, Logger: logger})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r, path, logs
}

func resolve(t *testing.T, r *Resolver, name string) discovery.Watch {
	t.Helper()
	w, err := r.Resolve(context.Background(), name)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", name, err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// next waits up to 2s for an update.
func next(t *testing.T, w discovery.Watch) discovery.Update {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	u, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return u
}

// noUpdate checks that nothing arrives within d.
func noUpdate(t *testing.T, w discovery.Watch, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if u, err := w.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next = %+v, %v; want no update", u, err)
	}
}

func addrs(u discovery.Update) []string {
	out := []string{}
	for _, e := range u.Endpoints {
		out = append(out, e.Addr)
	}
	return out
}

func wantReset(t *testing.T, u discovery.Update, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if u.Kind != discovery.Reset || !reflect.DeepEqual(addrs(u), want) {
		t.Fatalf("update = %v %v, want reset %v", u.Kind, addrs(u), want)
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, one(`{"addr": "h:0", "identity": "`+echoID+`"}`))
	empty := filepath.Join(dir, "empty.json")
	writeFile(t, empty, "")
	big := filepath.Join(dir, "big.json")
	writeFile(t, big, `{}`)
	if err := os.Truncate(big, MaxFileSize+1); err != nil { // sparse, cheap
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.json")

	tests := []struct {
		name string
		path string
		want []string
	}{
		{"missing", missing, []string{missing, "no such file or directory"}},
		{"directory", dir, []string{dir, "is a directory"}},
		{"invalid", bad, []string{bad, `service "echo": endpoint 0: invalid addr "h:0"`}},
		{"empty", empty, []string{empty, "empty input"}},
		{"too large", big, []string{big, "16777217 bytes is larger than the maximum of 16777216 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.path, Options{PollInterval: poll})
			if err == nil {
				r.Close()
				t.Fatal("New succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestResolveInitialReset(t *testing.T) {
	r, _, _ := newFileResolver(t, fileWith(map[string][]string{"echo": {"a:1", "b:2"}, "empty": nil}))
	if got := r.Services(); !reflect.DeepEqual(got, []string{"echo", "empty"}) {
		t.Errorf("Services = %v", got)
	}
	wantReset(t, next(t, resolve(t, r, "echo")), "a:1", "b:2")
	// A known service with no endpoints resolves and yields an empty Reset.
	w := resolve(t, r, "empty")
	wantReset(t, next(t, w))
	noUpdate(t, w, 3*poll)
}

func TestResolveUnknown(t *testing.T) {
	for _, r := range []*Resolver{
		NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1")}}),
		NewFromMap(nil),
	} {
		w, err := r.Resolve(context.Background(), "nope")
		if !errors.Is(err, discovery.ErrUnknownService) || w != nil {
			t.Fatalf("Resolve = %v, %v; want ErrUnknownService", w, err)
		}
		if !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("error %q does not name the service", err)
		}
		r.Close()
	}
}

func TestResolveCancelledContext(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1")}})
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Resolve(ctx, "echo"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Resolve = %v, want context.Canceled", err)
	}
}

func TestReloadOnChange(t *testing.T) {
	r, path, logs := newFileResolver(t, fileWith(map[string][]string{"echo": {"a:1"}, "web": {"w:1"}}))
	echo := resolve(t, r, "echo")
	web := resolve(t, r, "web")
	wantReset(t, next(t, echo), "a:1")
	wantReset(t, next(t, web), "w:1")

	writeFile(t, path, fileWith(map[string][]string{"echo": {"a:1", "b:2"}, "web": {"w:1"}}))
	wantReset(t, next(t, echo), "a:1", "b:2")
	// web did not change, so its watch gets nothing.
	noUpdate(t, web, 5*poll)

	// Same size, different content, written in place: still noticed.
	writeFile(t, path, fileWith(map[string][]string{"echo": {"a:1", "b:3"}, "web": {"w:1"}}))
	wantReset(t, next(t, echo), "a:1", "b:3")

	// A rewrite with identical content (new mtime) delivers nothing.
	time.Sleep(2 * poll)
	writeFile(t, path, fileWith(map[string][]string{"echo": {"a:1", "b:3"}, "web": {"w:1"}}))
	noUpdate(t, echo, 5*poll)

	if !strings.Contains(logs.String(), "reloaded endpoints file") {
		t.Errorf("no reload logged:\n%s", logs)
	}
}

func TestReloadMetadataChange(t *testing.T) {
	content := func(v string) string {
		return one(`{"addr": "a:1", "identity": "` + echoID + `", "metadata": {"k": "` + v + `"}}`)
	}
	r, path, _ := newFileResolver(t, content("1"))
	w := resolve(t, r, "echo")
	if u := next(t, w); u.Endpoints[0].Metadata["k"] != "1" {
		t.Fatalf("metadata = %v", u.Endpoints[0].Metadata)
	}
	writeFile(t, path, content("2"))
	if u := next(t, w); u.Endpoints[0].Metadata["k"] != "2" {
		t.Fatalf("metadata = %v", u.Endpoints[0].Metadata)
	}
}

func TestBadReloadKeepsLastGood(t *testing.T) {
	r, path, logs := newFileResolver(t, fileWith(map[string][]string{"echo": {"a:1"}}))
	w := resolve(t, r, "echo")
	wantReset(t, next(t, w), "a:1")

	bads := []struct{ name, content, logged string }{
		{"syntax", `{"services": {`, "unexpected end of input"},
		{"validation", one(`{"addr": "a:1", "identity": "nope"}`), `invalid identity \"nope\"`},
		{"empty", ``, "empty input"},
	}
	for _, bad := range bads {
		writeFile(t, path, bad.content)
		deadline := testkit.HangGuard(t)
		for !strings.Contains(logs.String(), bad.logged) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no warning containing %q logged:\n%s", bad.name, bad.logged, logs)
			}
			time.Sleep(poll)
		}
		noUpdate(t, w, 3*poll)
		// New watches still get the last good data.
		wantReset(t, next(t, resolve(t, r, "echo")), "a:1")
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != len(bads) {
		t.Errorf("%d warnings logged, want %d (one per bad file):\n%s", n, len(bads), logs)
	}

	// The file disappearing is a bad reload too.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * poll)
	noUpdate(t, w, poll)
	if !strings.Contains(logs.String(), "no such file") {
		t.Errorf("missing file not logged:\n%s", logs)
	}

	// A good file is picked up again.
	writeFile(t, path, fileWith(map[string][]string{"echo": {"c:3"}}))
	wantReset(t, next(t, w), "c:3")
	if !strings.Contains(logs.String(), "valid again") {
		t.Errorf("recovery not logged:\n%s", logs)
	}
}

func TestServiceRemovedAndReadded(t *testing.T) {
	r, path, _ := newFileResolver(t, fileWith(map[string][]string{"echo": {"a:1"}, "web": {"w:1"}}))
	w := resolve(t, r, "echo")
	wantReset(t, next(t, w), "a:1")

	writeFile(t, path, fileWith(map[string][]string{"web": {"w:1"}}))
	wantReset(t, next(t, w))
	if _, err := r.Resolve(context.Background(), "echo"); !errors.Is(err, discovery.ErrUnknownService) {
		t.Fatalf("Resolve after removal = %v, want ErrUnknownService", err)
	}

	writeFile(t, path, fileWith(map[string][]string{"echo": {"b:2"}, "web": {"w:1"}}))
	wantReset(t, next(t, w), "b:2")
}

func TestSetNotifiesChangedServicesOnly(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1")}, "web": {ep("w:1")}})
	defer r.Close()
	echo, web := resolve(t, r, "echo"), resolve(t, r, "web")
	wantReset(t, next(t, echo), "a:1")
	wantReset(t, next(t, web), "w:1")

	r.Set(map[string][]discovery.Endpoint{"echo": {ep("a:1"), ep("b:2")}, "web": {ep("w:1")}})
	wantReset(t, next(t, echo), "a:1", "b:2")
	noUpdate(t, web, 3*poll)

	// Weight 0 is normalized, so this is not a change for web.
	r.Set(map[string][]discovery.Endpoint{
		"echo": {ep("a:1"), ep("b:2")},
		"web":  {{Addr: "w:1", Identity: echoID}},
	})
	noUpdate(t, web, 3*poll)
	noUpdate(t, echo, poll)

	r.Set(nil)
	wantReset(t, next(t, echo))
	wantReset(t, next(t, web))
}

func TestDataIsCopied(t *testing.T) {
	src := map[string][]discovery.Endpoint{"echo": {{Addr: "a:1", Identity: echoID, Metadata: map[string]string{"k": "v"}}}}
	r := NewFromMap(src)
	defer r.Close()
	src["echo"][0].Addr = "mutated:1"
	src["echo"][0].Metadata["k"] = "mutated"

	u := next(t, resolve(t, r, "echo"))
	if u.Endpoints[0].Addr != "a:1" || u.Endpoints[0].Metadata["k"] != "v" || u.Endpoints[0].Weight != 1 {
		t.Fatalf("endpoint = %+v", u.Endpoints[0])
	}
	u.Endpoints[0].Addr = "mutated:2"
	u.Endpoints[0].Metadata["k"] = "mutated"

	u = next(t, resolve(t, r, "echo"))
	if u.Endpoints[0].Addr != "a:1" || u.Endpoints[0].Metadata["k"] != "v" {
		t.Fatalf("endpoint = %+v after a watcher mutated its copy", u.Endpoints[0])
	}
}

func TestSlowWatcherCoalesces(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("v:0")}})
	defer r.Close()
	slow := resolve(t, r, "echo") // never read until the end
	fast := resolve(t, r, "echo")
	wantReset(t, next(t, fast), "v:0")

	// The fast watcher keeps up in the background.
	const n = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	last := make(chan string, 1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for {
			u, err := fast.Next(ctx)
			if err != nil {
				return
			}
			if a := u.Endpoints[0].Addr; a == fmt.Sprintf("v:%d", n) {
				last <- a
				return
			}
		}
	}()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			r.Set(map[string][]discovery.Endpoint{"echo": {ep(fmt.Sprintf("v:%d", i))}})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Set blocked on a slow watcher")
	}
	select {
	case a := <-last:
		if a != fmt.Sprintf("v:%d", n) {
			t.Fatalf("fast watcher ended at %s", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fast watcher did not see the final state")
	}
	wg.Wait()

	// The slow watcher gets exactly one update: the latest state.
	wantReset(t, next(t, slow), fmt.Sprintf("v:%d", n))
	noUpdate(t, slow, 3*poll)
}

func TestConcurrentWatchers(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("v:0")}})
	defer r.Close()
	const watchers, sets = 8, 200
	final := fmt.Sprintf("v:%d", sets)
	var wg sync.WaitGroup
	errs := make(chan error, watchers)
	for range watchers {
		w := resolve(t, r, "echo")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				u, err := w.Next(ctx)
				if err != nil {
					errs <- err
					return
				}
				if u.Kind != discovery.Reset || len(u.Endpoints) != 1 {
					errs <- fmt.Errorf("bad update %+v", u)
					return
				}
				if u.Endpoints[0].Addr == final {
					return
				}
			}
		}()
	}
	for i := 1; i <= sets; i++ {
		r.Set(map[string][]discovery.Endpoint{"echo": {ep(fmt.Sprintf("v:%d", i))}})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	r, path, _ := newFileResolver(t, fileWith(map[string][]string{"echo": {"a:1"}}))
	blocked := resolve(t, r, "echo")
	wantReset(t, next(t, blocked), "a:1")
	pending := resolve(t, r, "echo") // has an unread update

	res := make(chan error, 1)
	go func() {
		_, err := blocked.Next(context.Background())
		res <- err
	}()
	time.Sleep(poll)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, discovery.ErrClosed) {
			t.Fatalf("blocked Next = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("blocked Next did not return after Close")
	}
	if _, err := pending.Next(context.Background()); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Next = %v, want ErrClosed", err)
	}
	if _, err := r.Resolve(context.Background(), "echo"); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Resolve after Close = %v, want ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := blocked.Close(); err != nil {
		t.Fatalf("watch Close after resolver Close: %v", err)
	}
	// The poller is gone: changes are no longer read (nothing to observe
	// but the absence of a panic or race) and Set is a no-op.
	writeFile(t, path, fileWith(map[string][]string{"echo": {"b:2"}}))
	r.Set(map[string][]discovery.Endpoint{"x": nil})
	time.Sleep(3 * poll)
}

func TestWatchClose(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1")}})
	defer r.Close()
	w, err := r.Resolve(context.Background(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	other := resolve(t, r, "echo")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.Next(context.Background()); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	r.mu.Lock()
	n := len(r.watches["echo"])
	r.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d watches registered, want 1", n)
	}
	wantReset(t, next(t, other), "a:1")
	r.Set(map[string][]discovery.Endpoint{"echo": {ep("b:2")}})
	wantReset(t, next(t, other), "b:2")
}

func TestNextContextCancel(t *testing.T) {
	r := NewFromMap(map[string][]discovery.Endpoint{"echo": {ep("a:1")}})
	defer r.Close()
	w := resolve(t, r, "echo")
	next(t, w)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(poll)
		cancel()
	}()
	if _, err := w.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
	// The watch is still usable.
	r.Set(map[string][]discovery.Endpoint{"echo": {ep("b:2")}})
	wantReset(t, next(t, w), "b:2")
}

func TestDefaultPollInterval(t *testing.T) {
	path := filepath.Join(t.TempDir(), "e.json")
	writeFile(t, path, `{}`)
	r, err := New(path, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.interval != DefaultPollInterval || DefaultPollInterval != time.Second {
		t.Fatalf("interval = %v", r.interval)
	}
}
