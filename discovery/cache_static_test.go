package discovery_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/discovery/static"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

const id = "spiffe://demo.local/ns/default/sa/echo"

func endpoint(addr string) discovery.Endpoint {
	return discovery.Endpoint{Addr: addr, Identity: id, Weight: 1}
}

func lookup(c *discovery.Cache, name string) ([]discovery.Endpoint, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Endpoints(ctx, name)
}

func hasAddrs(c *discovery.Cache, name string, addrs ...string) func() bool {
	return func() bool {
		got, err := lookup(c, name)
		if err != nil || len(got) != len(addrs) {
			return false
		}
		for i := range got {
			if got[i].Addr != addrs[i] {
				return false
			}
		}
		return true
	}
}

// TestCacheOverStaticResolver runs the Cache against a file-backed static
// Resolver: reloads flow through, a removed service yields
// ErrNoEndpoints, an unknown one ErrUnknownService, and closing both
// leaves no goroutines behind.
func TestCacheOverStaticResolver(t *testing.T) {
	base := testkit.TakeBaseline()
	path := filepath.Join(t.TempDir(), "endpoints.json")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "` + id + `"}]},
		"web": {"endpoints": [{"addr": "127.0.0.1:5000", "identity": "` + id + `"}]}}}`)
	logger := slog.New(slog.DiscardHandler)
	r, err := static.New(path, static.Options{PollInterval: 20 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	c := discovery.NewCache(r, logger)

	if !hasAddrs(c, "echo", "127.0.0.1:4143")() || !hasAddrs(c, "web", "127.0.0.1:5000")() {
		t.Fatal("initial endpoints not served")
	}
	if _, err := lookup(c, "nope"); !errors.Is(err, discovery.ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}

	write(`{"services": {"echo": {"endpoints": [{"addr": "127.0.0.1:4143", "identity": "` + id + `"},
		{"addr": "127.0.0.1:4144", "identity": "` + id + `"}]}}}`)
	testkit.Eventually(t, "reloaded echo", hasAddrs(c, "echo", "127.0.0.1:4143", "127.0.0.1:4144"))
	testkit.Eventually(t, "web removed", func() bool {
		_, err := lookup(c, "web")
		return errors.Is(err, discovery.ErrNoEndpoints)
	})

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := lookup(c, "echo"); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	base.Check(t)
}

// TestCacheOverSet: updates made with Set reach the Cache, including a
// service that appears after a failed lookup (retried after the 1s rate
// limit).
func TestCacheOverSet(t *testing.T) {
	t.Parallel()
	r := static.NewFromMap(map[string][]discovery.Endpoint{"echo": {endpoint("a:1")}})
	defer r.Close()
	c := discovery.NewCache(r, slog.New(slog.DiscardHandler))
	defer c.Close()

	testkit.Eventually(t, "echo", hasAddrs(c, "echo", "a:1"))
	if _, err := lookup(c, "web"); !errors.Is(err, discovery.ErrUnknownService) {
		t.Fatalf("web: %v", err)
	}
	r.Set(map[string][]discovery.Endpoint{"echo": {endpoint("b:2")}, "web": {endpoint("w:1")}})
	testkit.Eventually(t, "echo updated", hasAddrs(c, "echo", "b:2"))
	// Within the rate limit the old error is returned...
	if _, err := lookup(c, "web"); !errors.Is(err, discovery.ErrUnknownService) {
		t.Fatalf("web right after Set: %v", err)
	}
	// ...and once it has passed, the new service is found.
	testkit.Eventually(t, "web found", hasAddrs(c, "web", "w:1"))
}

// TestCacheStaticResolverClosed: a resolver closed under the Cache ends its
// watches; the Cache keeps serving the last set until it re-resolves, and
// then reports the resolver's ErrClosed.
func TestCacheStaticResolverClosed(t *testing.T) {
	t.Parallel()
	r := static.NewFromMap(map[string][]discovery.Endpoint{"echo": {endpoint("a:1")}})
	c := discovery.NewCache(r, slog.New(slog.DiscardHandler))
	defer c.Close()
	testkit.Eventually(t, "echo", hasAddrs(c, "echo", "a:1"))
	r.Close()
	if !hasAddrs(c, "echo", "a:1")() {
		t.Fatal("last set not served right after the resolver closed")
	}
	testkit.Eventually(t, "ErrClosed from the closed resolver", func() bool {
		_, err := lookup(c, "echo")
		return errors.Is(err, discovery.ErrClosed)
	})
}
