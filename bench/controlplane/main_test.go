package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicmesh/quicmesh/internal/kubetest"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

var (
	buildOnce sync.Once
	buildDir  string
	builtBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := kubetest.Main(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// controlBin builds quicmesh-control once per test binary.
func controlBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "quicmesh-cpbench-test-"); buildErr == nil {
			builtBin, buildErr = buildControl(context.Background(), buildDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// TestRunSmall runs the whole measurement at a small scale against the
// real API server and checks its accounting: every change reaches every
// stream that follows its service (each WatchIndex and the Watch streams
// of the service), none is lost, and each phase read the control plane's
// usage.
func TestRunSmall(t *testing.T) {
	// The cluster is the package's, started by the first test to ask:
	// its goroutines are not this test's.
	c := kubetest.Get(t)
	testkit.CheckLeaks(t)
	cfg := Config{
		Namespace: c.Namespace(t), Services: 6, Endpoints: 2, Sidecars: 4, WatchesPerSidecar: 3, Index: true,
		Idle: 200 * time.Millisecond, Steady: 200 * time.Millisecond, Churn: time.Second, Rate: 8,
		ControlBin: controlBin(t),
	}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	res, err := Run(testkit.HangCtx(t), c, t.TempDir(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Phases) != 5 {
		t.Fatalf("%d phases, want 5: %+v", len(res.Phases), res.Phases)
	}
	for _, p := range res.Phases {
		if p.RSSMiB <= 0 || p.HWMMiB < p.RSSMiB || p.Seconds <= 0 || p.CPUSeconds < 0 {
			t.Errorf("phase %q: implausible usage %+v", p.Name, p)
		}
	}
	ch := res.Churn
	if ch == nil || ch.Changes != 8 {
		t.Fatalf("churn: %+v, want 8 changes", ch)
	}
	// Changes go round robin over the services: change n to service n mod
	// 6, followed by every sidecar's WatchIndex and by its Watch streams.
	_, watchers := assignWatches(cfg)
	want := 0
	for n := range ch.Changes {
		want += cfg.Sidecars + watchers[n%cfg.Services]
	}
	if ch.Deliveries != want || ch.Undelivered != 0 || ch.AllWatchers.N != ch.Changes {
		t.Fatalf("%d deliveries, %d undelivered, %d changes complete; want %d, 0, %d", ch.Deliveries, ch.Undelivered, ch.AllWatchers.N, want, ch.Changes)
	}
	if ch.AllWatchers.P50 <= 0 || ch.Delivery.P50 <= 0 {
		t.Errorf("delivery times not positive: until the last stream p50 %v ms, each stream p50 %v ms", ch.AllWatchers.P50, ch.Delivery.P50)
	}
	if res.IndexSnapshotBytes <= 0 {
		t.Errorf("index snapshot of %d bytes", res.IndexSnapshotBytes)
	}
	var out bytes.Buffer
	res.Print(&out)
	if !strings.Contains(out.String(), "| churn, 8 updates/s |") {
		t.Errorf("the report lacks the churn phase:\n%s", out.String())
	}
}

// A test that uses the shared cluster's admin client after its connection
// idled out (client-go closes it after 90 s idle, which a slow test on a
// loaded machine outlasts) leaves no goroutine of the connection that
// replaced it: TestRunSmall's leak check once failed on its HTTP/2 read
// loop.
func TestNamespaceLeavesNoAdminConnection(t *testing.T) {
	c := kubetest.Get(t)
	c.CloseIdleConnections() // as if the connection had idled out
	testkit.CheckLeaks(t)
	c.Namespace(t)
}
