package controlplane

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// scriptedIndex answers each WatchIndex call with the next script: an
// error, or a stream that delivers msgs, then fails (end) or blocks until
// its context ends (end == nil).
type scriptedIndex struct {
	scripts chan indexScript
	calls   chan struct{} // receives after each call
}

type indexScript struct {
	err  error
	msgs []*controlpb.IndexUpdate
	end  error
}

func (s *scriptedIndex) Watch(context.Context, *controlpb.WatchRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[controlpb.EndpointUpdate], error) {
	return nil, errors.New("not used")
}

func (s *scriptedIndex) WatchIndex(ctx context.Context, _ *controlpb.WatchIndexRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[controlpb.IndexUpdate], error) {
	defer func() { s.calls <- struct{}{} }()
	select {
	case sc := <-s.scripts:
		if sc.err != nil {
			return nil, sc.err
		}
		return &scriptedStream{ctx: ctx, script: sc}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type scriptedStream struct {
	grpc.ClientStream
	ctx    context.Context
	script indexScript
}

func (s *scriptedStream) Recv() (*controlpb.IndexUpdate, error) {
	if len(s.script.msgs) > 0 {
		m := s.script.msgs[0]
		s.script.msgs = s.script.msgs[1:]
		return m, nil
	}
	if s.script.end != nil {
		return nil, s.script.end
	}
	<-s.ctx.Done()
	return nil, status.FromContextError(s.ctx.Err()).Err()
}

// TestWatchCatalogReconnects: a failed stream publishes nothing (the Index
// keeps its last table), failed connection attempts are retried, and the
// next stream's snapshot replaces the list; Close ends the goroutine.
func TestWatchCatalogReconnects(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "control plane down")
	src := &scriptedIndex{scripts: make(chan indexScript, 3), calls: make(chan struct{}, 4)}
	src.scripts <- indexScript{msgs: []*controlpb.IndexUpdate{
		{Kind: controlpb.Kind_SNAPSHOT, Services: []*controlpb.Service{{Name: "a.n", VirtualIps: []string{"10.96.0.1"}}}},
		{Kind: controlpb.Kind_ADD, Services: []*controlpb.Service{{Name: "b.n", VirtualIps: []string{"10.96.0.2"}}}},
	}, end: unavailable}
	src.scripts <- indexScript{err: unavailable}
	src.scripts <- indexScript{msgs: []*controlpb.IndexUpdate{{Kind: controlpb.Kind_ADD}}} // no snapshot first: refused
	r := NewWithOptions(src, Options{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	cw, err := r.WatchCatalog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := func() []string {
		t.Helper()
		svcs, err := cw.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range svcs {
			out = append(out, s.Name)
		}
		return out
	}
	// The first stream's two messages may be read before Next: the
	// mailbox then holds the newer list only.
	got := names()
	if len(got) == 1 {
		got = names()
	}
	if want := []string{"a.n", "b.n"}; !slices.Equal(got, want) {
		t.Fatalf("first stream: %v, want %v", got, want)
	}
	// The control plane comes back only now, so the new snapshot cannot
	// overtake the lists above in the mailbox. Nothing comes in between
	// (no empty list for the failures): the next list is its snapshot.
	src.scripts <- indexScript{msgs: []*controlpb.IndexUpdate{
		{Kind: controlpb.Kind_SNAPSHOT, Services: []*controlpb.Service{{Name: "c.n", VirtualIps: []string{"10.96.0.3"}}}},
	}}
	if got, want := names(), []string{"c.n"}; !slices.Equal(got, want) {
		t.Fatalf("after reconnecting: %v, want %v", got, want)
	}
	for range 4 {
		<-src.calls
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cw.Next(ctx); !errors.Is(err, discovery.ErrClosed) {
		t.Fatalf("Next after Close: %v, want ErrClosed", err)
	}
	select {
	case <-src.calls:
		t.Fatal("WatchIndex called after the 4 scripted calls")
	default:
	}
}
