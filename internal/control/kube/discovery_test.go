package kube_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

// discoveryClient runs a Source as the control plane's service account
// and serves it on loopback gRPC (admission is the TLS server's concern,
// tested in internal/control).
func discoveryClient(t *testing.T, c *kubetest.Cluster) controlpb.DiscoveryClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	src, err := kube.StartSource(ctx, controlClient(t, c), kube.SourceOptions{TrustDomain: trustDomain})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	controlpb.RegisterDiscoveryServer(srv, control.NewDiscoveryServer(src, func(context.Context) error { return nil }, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() {
		srv.Stop()
		cancel()
		src.Wait()
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return controlpb.NewDiscoveryClient(conn)
}

// world creates Kubernetes objects the way the controllers that the test
// API server lacks would.
type world struct {
	t  *testing.T
	c  *kubetest.Cluster
	ns string
}

func (w world) service(name string, ports ...int32) *corev1.Service {
	w.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns}}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "p" + strconv.Itoa(int(p)), Port: p})
	}
	out, err := w.c.Admin.CoreV1().Services(w.ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

// pod creates a pod of service account sa whose sidecar listens on
// inboundPort.
func (w world) pod(name, sa string, inboundPort int) {
	w.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns, Annotations: map[string]string{kube.AnnotationInboundPort: strconv.Itoa(inboundPort)}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
	if _, err := w.c.Admin.CoreV1().Pods(w.ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

type ep struct {
	pod   string
	ip    string
	ready bool
	zone  string
}

func (w world) sliceObject(service, name string, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: w.ns, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		out := discoveryv1.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: e.pod, Namespace: w.ns},
		}
		if e.zone != "" {
			out.Zone = ptr.To(e.zone)
		}
		sl.Endpoints = append(sl.Endpoints, out)
	}
	return sl
}

func (w world) createSlice(sl *discoveryv1.EndpointSlice) {
	w.t.Helper()
	if _, err := w.c.Admin.DiscoveryV1().EndpointSlices(w.ns).Create(context.Background(), sl, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

func (w world) updateSlice(sl *discoveryv1.EndpointSlice) {
	w.t.Helper()
	cur, err := w.c.Admin.DiscoveryV1().EndpointSlices(w.ns).Get(context.Background(), sl.Name, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	sl.ResourceVersion = cur.ResourceVersion
	if _, err := w.c.Admin.DiscoveryV1().EndpointSlices(w.ns).Update(context.Background(), sl, metav1.UpdateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

// recv returns the stream's next update, failing the test if none comes
// within a second: the bound from an EndpointSlice change to the
// sidecar.
func recv[T any](t *testing.T, next func() (T, error)) T {
	t.Helper()
	return recvWithin(t, next, time.Second)
}

func recvWithin[T any](t *testing.T, next func() (T, error), within time.Duration) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	start := time.Now()
	go func() {
		v, err := next()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("stream: %v", r.err)
		}
		t.Logf("update after %v", time.Since(start).Round(time.Millisecond))
		return r.v
	case <-time.After(within):
		t.Fatalf("no update within %v", within)
	}
	panic("unreachable")
}

func endpointPB(ns, sa, ip string, port int, ready bool, zone string) *controlpb.Endpoint {
	return &controlpb.Endpoint{
		Address:  net.JoinHostPort(ip, strconv.Itoa(port)),
		Identity: fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, ns, sa),
		Weight:   1,
		Zone:     zone,
		Ports:    []*controlpb.Port{{Name: "http", Port: 8080, Protocol: "TCP"}},
		Ready:    ready,
		PodIp:    ip,
	}
}

// mirror applies a Watch stream's updates the way a sidecar does.
type mirror map[string]*controlpb.Endpoint

func (m mirror) apply(t *testing.T, u *controlpb.EndpointUpdate) {
	t.Helper()
	switch u.Kind {
	case controlpb.Kind_SNAPSHOT:
		clear(m)
		fallthrough
	case controlpb.Kind_ADD:
		for _, ep := range u.Endpoints {
			m[control.EndpointKey(ep)] = ep
		}
	case controlpb.Kind_REMOVE:
		for _, ep := range u.Endpoints {
			delete(m, control.EndpointKey(ep))
		}
	default:
		t.Fatalf("update of kind %v", u.Kind)
	}
}

func (m mirror) equals(want []*controlpb.Endpoint) bool {
	if len(m) != len(want) {
		return false
	}
	for _, ep := range want {
		if !proto.Equal(m[control.EndpointKey(ep)], ep) {
			return false
		}
	}
	return true
}

// follow applies the stream's updates until the mirror holds exactly
// want, which must happen within a second of the change (the issue's
// bound from an EndpointSlice change to the sidecar). Only the first
// message of a stream may be a snapshot, unless the service is gone.
// The informers of the three kinds see related changes in any order (a
// pod may reach the cache after the slice naming it), so one change may
// take more than one update.
func follow(t *testing.T, stream controlpb.Discovery_WatchClient, m mirror, want ...*controlpb.Endpoint) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for !m.equals(want) {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("after 1 s the stream says %v, want %v", m, want)
		}
		u := recvWithin(t, stream.Recv, left)
		if u.Kind == controlpb.Kind_SNAPSHOT && len(want) > 0 {
			t.Fatalf("a snapshot mid-stream: %v", u)
		}
		m.apply(t, u)
	}
}

func wantUpdate(t *testing.T, got *controlpb.EndpointUpdate, kind controlpb.Kind, eps ...*controlpb.Endpoint) {
	t.Helper()
	want := &controlpb.EndpointUpdate{Kind: kind, Endpoints: eps}
	if !proto.Equal(got, want) {
		t.Fatalf("update\n got %v\nwant %v", got, want)
	}
}

// TestWatch follows one service through the changes a cluster makes:
// scaling its EndpointSlice from 1 to 3 endpoints, an endpoint turning
// not ready, one removed, the service deleted; each change reaches the
// stream within a second and as the smallest delta. Identities come from
// the pods' service accounts.
func TestWatch(t *testing.T) {
	c := kubetest.Get(t)
	w := world{t, c, c.Namespace(t)}
	client := discoveryClient(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	unknown, err := client.Watch(ctx, &controlpb.WatchRequest{Service: "nope." + w.ns})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unknown.Recv(); status.Code(err) != codes.NotFound {
		t.Fatalf("watch of an unknown service: %v, want NotFound", err)
	}
	bad, err := client.Watch(ctx, &controlpb.WatchRequest{Service: "no-namespace"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("watch of a malformed name: %v, want InvalidArgument", err)
	}

	w.service("echo", 80)
	for i, sa := range []string{"echo", "echo", "echo-canary"} {
		w.pod(fmt.Sprintf("echo-%d", i), sa, 5000+i)
	}
	w.createSlice(w.sliceObject("echo", "echo-1", 8080, ep{"echo-0", "192.0.2.10", true, "z1"}))
	stream, err := client.Watch(ctx, &controlpb.WatchRequest{Service: "echo." + w.ns})
	if err != nil {
		t.Fatal(err)
	}
	e0 := endpointPB(w.ns, "echo", "192.0.2.10", 5000, true, "z1")
	e1 := endpointPB(w.ns, "echo", "192.0.2.11", 5001, true, "z2")
	e2 := endpointPB(w.ns, "echo-canary", "192.0.2.12", 5002, true, "")
	m := mirror{}
	// The snapshot is the control plane's current view, which may not yet
	// hold what the test just created.
	if first := recv(t, stream.Recv); first.Kind != controlpb.Kind_SNAPSHOT {
		t.Fatalf("first update %v, want a snapshot", first)
	} else {
		m.apply(t, first)
	}
	follow(t, stream, m, e0)

	t.Run("scale 1 to 3", func(t *testing.T) {
		w.updateSlice(w.sliceObject("echo", "echo-1", 8080,
			ep{"echo-0", "192.0.2.10", true, "z1"}, ep{"echo-1", "192.0.2.11", true, "z2"}, ep{"echo-2", "192.0.2.12", true, ""}))
		follow(t, stream, m, e0, e1, e2)
	})
	notReady := proto.Clone(e1).(*controlpb.Endpoint)
	notReady.Ready = false
	t.Run("an endpoint turns not ready", func(t *testing.T) {
		w.updateSlice(w.sliceObject("echo", "echo-1", 8080,
			ep{"echo-0", "192.0.2.10", true, "z1"}, ep{"echo-1", "192.0.2.11", false, "z2"}, ep{"echo-2", "192.0.2.12", true, ""}))
		follow(t, stream, m, e0, notReady, e2)
	})
	t.Run("one removed", func(t *testing.T) {
		w.updateSlice(w.sliceObject("echo", "echo-1", 8080,
			ep{"echo-0", "192.0.2.10", true, "z1"}, ep{"echo-2", "192.0.2.12", true, ""}))
		wantUpdate(t, recv(t, stream.Recv), controlpb.Kind_REMOVE, &controlpb.Endpoint{Address: e1.Address, Identity: e1.Identity})
		m.apply(t, &controlpb.EndpointUpdate{Kind: controlpb.Kind_REMOVE, Endpoints: []*controlpb.Endpoint{e1}})
	})
	t.Run("a new watch starts with the whole set", func(t *testing.T) {
		again, err := client.Watch(ctx, &controlpb.WatchRequest{Service: "echo." + w.ns})
		if err != nil {
			t.Fatal(err)
		}
		wantUpdate(t, recv(t, again.Recv), controlpb.Kind_SNAPSHOT, e0, e2)
	})
	t.Run("an endpoint whose pod is unknown is not served", func(t *testing.T) {
		w.createSlice(w.sliceObject("echo", "echo-2", 8080, ep{"ghost", "192.0.2.13", true, ""}, ep{"echo-1", "192.0.2.11", true, "z2"}))
		follow(t, stream, m, e0, e1, e2)
	})
	t.Run("an endpoint whose pod is deleted is withdrawn", func(t *testing.T) {
		if err := c.Admin.CoreV1().Pods(w.ns).Delete(context.Background(), "echo-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		follow(t, stream, m, e0, e2)
	})
	t.Run("service deleted", func(t *testing.T) {
		if err := c.Admin.CoreV1().Services(w.ns).Delete(context.Background(), "echo", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		wantUpdate(t, recv(t, stream.Recv), controlpb.Kind_SNAPSHOT)
	})
}

// TestWatchIndex: every service arrives whole in the catalog, with its
// cluster IPs, ports (target ports resolved) and endpoints ready or not;
// a deleted one is removed.
func TestWatchIndex(t *testing.T) {
	c := kubetest.Get(t)
	w := world{t, c, c.Namespace(t)}
	client := discoveryClient(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.WatchIndex(ctx, &controlpb.WatchIndexRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if snap := recv(t, stream.Recv); snap.Kind != controlpb.Kind_SNAPSHOT {
		t.Fatalf("first update %v, want a snapshot", snap)
	}
	name := "web." + w.ns
	w.pod("web-0", "web", 4143)
	w.pod("web-1", "web", 4143)
	w.createSlice(w.sliceObject("web", "web-a", 8080, ep{pod: "web-0", ip: "192.0.2.10", ready: true}, ep{pod: "web-1", ip: "192.0.2.11"}))
	svc, err := c.Admin.CoreV1().Services(w.ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: w.ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "admin", Port: 9000},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := &controlpb.Service{
		Name:       name,
		VirtualIps: svc.Spec.ClusterIPs,
		Ports: []*controlpb.ServicePort{
			{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
			{Name: "admin", Port: 9000, TargetPort: 9000, Protocol: "TCP"},
		},
		Endpoints: []*controlpb.Endpoint{
			endpointPB(w.ns, "web", "192.0.2.10", 4143, true, ""),
			endpointPB(w.ns, "web", "192.0.2.11", 4143, false, ""),
		},
	}
	// Other tests' services share the stream; the service's entry may
	// also arrive before its endpoints' pods are all seen.
	for got := (*controlpb.Service)(nil); !proto.Equal(got, want); {
		u := recv(t, stream.Recv)
		if u.Kind != controlpb.Kind_ADD {
			t.Fatalf("update %v, want ADD", u)
		}
		for _, s := range u.Services {
			if s.Name == name {
				got = s
			}
		}
	}
	if err := c.Admin.CoreV1().Services(w.ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		u := recv(t, stream.Recv)
		if u.Kind == controlpb.Kind_REMOVE && slices.ContainsFunc(u.Services, func(s *controlpb.Service) bool { return proto.Equal(s, &controlpb.Service{Name: name}) }) {
			return
		}
		if u.Kind != controlpb.Kind_ADD {
			t.Fatalf("after deleting the service: %v, want its REMOVE (by name only)", u)
		}
	}
}
