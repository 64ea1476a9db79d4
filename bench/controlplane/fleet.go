package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/controlclient"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

// churnZonePrefix marks the zone the churn writes: "c" and the change's
// sequence number, which the sidecars read back from their streams.
const churnZonePrefix = "c"

// fleet is the simulated sidecars: each certifies with a token of its own
// ServiceAccount, then opens a TLS connection with its certificate and
// follows WatchIndex (if configured) and a few services with Watch. The
// streams keep nothing of what they receive but the churn's delivery
// times.
type fleet struct {
	cfg     Config
	cluster *kubetest.Cluster
	addr    string
	anchors *x509.CertPool
	cpID    identity.ID
	// watches[i] are the services sidecar i follows with Watch, and
	// watchers[k] how many streams follow service k that way.
	watches  [][]int
	watchers []int

	ctx    context.Context // ends the streams
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    []*grpc.ClientConn
	firstErr error

	snapshotBytes atomic.Int64
	track         tracker
}

func newFleet(cfg Config, cluster *kubetest.Cluster, addr string, ca *identity.CA) *fleet {
	f := &fleet{
		cfg: cfg, cluster: cluster, addr: addr, anchors: ca.Pool(),
		cpID:  identity.ID{TrustDomain: ca.TrustDomain(), Path: "/ns/quicmesh/sa/quicmesh-control"},
		track: tracker{changes: map[int]*change{}},
	}
	f.watches, f.watchers = assignWatches(cfg)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// assignWatches picks the services each sidecar follows with Watch, at
// random with a fixed seed (runs follow the same ones), and counts the
// Watch streams of each service.
func assignWatches(cfg Config) (watches [][]int, watchers []int) {
	watches, watchers = make([][]int, cfg.Sidecars), make([]int, cfg.Services)
	rng := mrand.New(mrand.NewPCG(14, 14))
	for i := range watches {
		watches[i] = rng.Perm(cfg.Services)[:cfg.WatchesPerSidecar]
		for _, k := range watches[i] {
			watchers[k]++
		}
	}
	return watches, watchers
}

// connect starts every sidecar and returns once each stream has delivered
// its snapshot.
func (f *fleet) connect(ctx context.Context) error {
	return parallel(ctx, f.cfg.Sidecars, func(i int) error { return f.start(ctx, i) })
}

func (f *fleet) start(ctx context.Context, i int) error {
	token, err := f.cluster.RequestToken(ctx, f.cfg.Namespace, sidecarAccount(i), audience, time.Hour)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("controlplane: key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("controlplane: CSR: %w", err)
	}
	// Certify needs no client certificate; Discovery needs one at the
	// handshake: two connections, as the sidecar makes them.
	conn, err := controlclient.Dial(f.addr, f.anchors, f.cpID, nil)
	if err != nil {
		return err
	}
	res, err := controlpb.NewIdentityClient(conn).Certify(ctx, &controlpb.CertifyRequest{Csr: csr, Token: token})
	conn.Close()
	if err != nil {
		return fmt.Errorf("controlplane: sidecar %d: certify: %w", i, err)
	}
	cert := &tls.Certificate{Certificate: res.GetChain(), PrivateKey: key}
	conn, err = controlclient.Dial(f.addr, f.anchors, f.cpID, func() (*tls.Certificate, error) { return cert, nil })
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.conns = append(f.conns, conn)
	f.mu.Unlock()
	client := controlpb.NewDiscoveryClient(conn)
	if f.cfg.Index {
		stream, err := client.WatchIndex(f.ctx, &controlpb.WatchIndexRequest{})
		if err != nil {
			return fmt.Errorf("controlplane: sidecar %d: watch index: %w", i, err)
		}
		if err := follow(f, stream, func(m *controlpb.IndexUpdate) (out []*controlpb.Endpoint) {
			for _, svc := range m.GetServices() {
				out = append(out, svc.GetEndpoints()...)
			}
			return out
		}); err != nil {
			return fmt.Errorf("controlplane: sidecar %d: watch index: %w", i, err)
		}
	}
	for _, k := range f.watches[i] {
		stream, err := client.Watch(f.ctx, &controlpb.WatchRequest{Service: serviceName(k) + "." + f.cfg.Namespace})
		if err != nil {
			return fmt.Errorf("controlplane: sidecar %d: watch %s: %w", i, serviceName(k), err)
		}
		if err := follow(f, stream, (*controlpb.EndpointUpdate).GetEndpoints); err != nil {
			return fmt.Errorf("controlplane: sidecar %d: watch %s: %w", i, serviceName(k), err)
		}
	}
	return nil
}

// follow reads stream's snapshot, then reads on in the background,
// reporting churn deliveries in the endpoints of each message.
func follow[T any](f *fleet, stream grpc.ServerStreamingClient[T], endpoints func(*T) []*controlpb.Endpoint) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if m, ok := any(first).(*controlpb.IndexUpdate); ok {
		if m.GetKind() != controlpb.Kind_SNAPSHOT {
			return fmt.Errorf("began with %v", m.GetKind())
		}
		f.snapshotBytes.Store(int64(proto.Size(m)))
	}
	f.wg.Go(func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				if f.ctx.Err() == nil {
					f.fail(fmt.Errorf("controlplane: a stream failed: %w", err))
				}
				return
			}
			at := time.Now()
			for _, ep := range endpoints(msg) {
				if seq, ok := strings.CutPrefix(ep.GetZone(), churnZonePrefix); ok {
					if n, err := strconv.Atoi(seq); err == nil {
						f.track.deliver(n, at)
					}
				}
			}
		}
	})
	return nil
}

func (f *fleet) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.firstErr == nil {
		f.firstErr = err
	}
}

func (f *fleet) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.firstErr
}

func (f *fleet) close() {
	f.cancel()
	f.mu.Lock()
	conns := f.conns
	f.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	f.wg.Wait()
}

// churn updates EndpointSlices at cfg.Rate for cfg.Churn: the n-th change
// sets the zone of the first endpoint of service n mod Services to "c<n>"
// (round robin, so a service changes again only after all others did),
// then waits until every stream following the service has it, or 15 s.
func (f *fleet) churn(ctx context.Context, client kubernetes.Interface, objs []*discoveryv1.EndpointSlice, cfg Config) (*ChurnStats, error) {
	n := max(1, int(cfg.Churn.Seconds()*cfg.Rate))
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	defer tick.Stop()
	index := 0
	if cfg.Index {
		index = cfg.Sidecars
	}
	var writes []time.Duration
	start := time.Now()
	for seq := range n {
		if seq > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-tick.C:
			}
		}
		k := seq % cfg.Services
		sl := objs[k].DeepCopy()
		sl.Endpoints[0].Zone = ptr.To(churnZonePrefix + strconv.Itoa(seq))
		sent := time.Now()
		f.track.sent(seq, index+f.watchers[k], sent)
		out, err := client.DiscoveryV1().EndpointSlices(cfg.Namespace).Update(ctx, sl, metav1.UpdateOptions{})
		if err != nil {
			return nil, fmt.Errorf("controlplane: churn: updating %s: %w", sl.Name, err)
		}
		writes = append(writes, time.Since(sent))
		objs[k] = out
	}
	elapsed := time.Since(start)
	deadline := time.Now().Add(15 * time.Second)
	for !f.track.complete() && time.Now().Before(deadline) && f.err() == nil {
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return nil, err
		}
	}
	st := f.track.stats()
	st.Changes = n
	st.RatePerSec = float64(n) / max(elapsed.Seconds(), 1/cfg.Rate)
	st.APIWrite = quantiles(writes)
	return st, nil
}

// tracker matches the churn's changes with their deliveries.
type tracker struct {
	mu         sync.Mutex
	changes    map[int]*change
	deliveries []time.Duration
}

type change struct {
	sent      time.Time
	want, got int
	last      time.Time
}

func (t *tracker) sent(seq, want int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes[seq] = &change{sent: at, want: want}
}

func (t *tracker) deliver(seq int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.changes[seq]
	if c == nil {
		return
	}
	c.got++
	c.last = at
	t.deliveries = append(t.deliveries, at.Sub(c.sent))
}

func (t *tracker) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.changes {
		if c.got < c.want {
			return false
		}
	}
	return true
}

func (t *tracker) stats() *ChurnStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := &ChurnStats{Deliveries: len(t.deliveries), Delivery: quantiles(t.deliveries)}
	var all []time.Duration
	for _, c := range t.changes {
		if c.want == 0 {
			continue // no stream follows the service (no WatchIndex, no Watch of it)
		}
		if c.got >= c.want {
			all = append(all, c.last.Sub(c.sent))
		} else {
			st.Undelivered += c.want - c.got
		}
	}
	st.AllWatchers = quantiles(all)
	return st
}
