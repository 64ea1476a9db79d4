package control

import (
	"maps"
	"slices"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// feedSource is a Source with only a catalog, which the test replaces.
type feedSource struct {
	mu      sync.Mutex
	cat     Catalog
	changed chan struct{}
	calls   int // of Catalog
}

func (s *feedSource) Subscribe(string) Subscription { panic("not used") }

func (s *feedSource) Catalog() (Catalog, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.cat, s.changed
}

func (s *feedSource) publish(edit func(Catalog)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.cat)
	edit(next)
	s.cat = next
	close(s.changed)
	s.changed = make(chan struct{})
}

// apply is what a sidecar does with the updates (discovery/controlplane's
// applyCatalog): it must end with the new catalog.
func apply(cat Catalog, updates []*controlpb.IndexUpdate) Catalog {
	out := maps.Clone(cat)
	for _, u := range updates {
		for _, svc := range u.GetServices() {
			switch u.GetKind() {
			case controlpb.Kind_ADD:
				out[svc.GetName()] = svc
			case controlpb.Kind_REMOVE:
				delete(out, svc.GetName())
			}
		}
	}
	return out
}

func sameCatalog(a, b Catalog) bool {
	return maps.EqualFunc(a, b, func(x, y *controlpb.Service) bool { return proto.Equal(x, y) })
}

// TestCatalogFeed: consecutive versions share one computed difference
// (streams that keep up do no per-service work of their own); a stream
// more than one version behind gets the difference from what it sent,
// which skips the states in between; a version with no change since
// gives nothing; the Source is asked again only once it said it changed.
func TestCatalogFeed(t *testing.T) {
	svc := func(name, ip string) *controlpb.Service {
		return &controlpb.Service{Name: name, VirtualIps: []string{ip}}
	}
	src := &feedSource{cat: Catalog{"a.ns": svc("a.ns", "10.0.0.1"), "b.ns": svc("b.ns", "10.0.0.2")}, changed: make(chan struct{})}
	f := catalogFeed{src: src}

	v0 := f.current()
	if again := f.current(); again != v0 || src.calls != 1 {
		t.Fatalf("no change: a new version (%v) or the Source asked %d times, want the same version and 1", again != v0, src.calls)
	}
	if u := v0.since(v0); u != nil {
		t.Fatalf("a version since itself: %v, want nothing", u)
	}
	select {
	case <-v0.changed:
		t.Fatal("v0.changed is closed before any change")
	default:
	}

	src.publish(func(c Catalog) { c["c.ns"] = svc("c.ns", "10.0.0.3") })
	<-v0.changed
	v1 := f.current()
	v1b := f.current()
	if v1b != v1 || v1.seq != v0.seq+1 {
		t.Fatalf("after one change: versions %d and %d, want one version %d", v1.seq, v1b.seq, v0.seq+1)
	}
	shared := v1.since(v0)
	if len(shared) == 0 || &shared[0] != &v1.updates[0] {
		t.Fatal("a stream one version behind did not get the shared updates")
	}
	if got := apply(v0.cat, shared); !sameCatalog(got, v1.cat) {
		t.Fatalf("v0 + updates = %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(v1.cat)))
	}

	// Two changes before anyone looks: one version, the intermediate
	// state skipped.
	src.publish(func(c Catalog) { delete(c, "a.ns") })
	src.publish(func(c Catalog) { c["b.ns"] = svc("b.ns", "10.0.0.22") })
	v2 := f.current()
	if v2.seq != v1.seq+1 {
		t.Fatalf("two changes seen at once made version %d, want %d", v2.seq, v1.seq+1)
	}
	if got := apply(v1.cat, v2.since(v1)); !sameCatalog(got, v2.cat) {
		t.Fatalf("v1 + updates = %v, want %v", got, v2.cat)
	}
	src.publish(func(c Catalog) { c["a.ns"] = svc("a.ns", "10.0.0.11") })
	v3 := f.current()
	// v0's stream was busy for three versions: its own difference, as
	// one removal-free set of additions (a.ns changed, b.ns changed, c.ns
	// new), not a replay.
	behind := v3.since(v0)
	if got := apply(v0.cat, behind); !sameCatalog(got, v3.cat) {
		t.Fatalf("v0 + updates = %v, want %v", got, v3.cat)
	}
	if len(behind) != 1 || behind[0].GetKind() != controlpb.Kind_ADD || len(behind[0].GetServices()) != 3 {
		t.Fatalf("updates from three versions back: %v, want one ADD of a, b and c", behind)
	}
}
