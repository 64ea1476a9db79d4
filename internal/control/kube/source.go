package kube

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// Pod annotations the Source reads.
const (
	// AnnotationInboundPort is the pod's sidecar inbound (QUIC) port, when
	// it is not the Source's default.
	AnnotationInboundPort = "quicmesh.io/inbound-port"
	// AnnotationWeight is the pod's load-balancing weight (1 to 10000).
	AnnotationWeight = "quicmesh.io/weight"
)

// DefaultInboundPort is the sidecar's inbound port when a pod does not
// name another.
const DefaultInboundPort = 4143

const (
	byService = "service" // EndpointSlice index: NAMESPACE/NAME of its service
	byPod     = "pod"     // EndpointSlice index: NAMESPACE/NAME of each pod it targets
)

// SourceOptions configures a Source.
type SourceOptions struct {
	// TrustDomain of the identities derived from pods' service accounts.
	TrustDomain string
	// InboundPort is the sidecar port when a pod has no
	// AnnotationInboundPort; 0 means DefaultInboundPort.
	InboundPort int
	// SyncTimeout bounds the first listing of the three kinds; 0 means
	// two minutes.
	SyncTimeout time.Duration
	Logger      *slog.Logger
}

// Source is a control.Source on client-go shared informers: one watch of
// Services, one of EndpointSlices and one of Pods for the whole process,
// whatever the number of subscribers. Only services someone subscribes to
// are computed; a change recomputes just the services it touches, on one
// goroutine, and publishes a new immutable set only if it differs.
type Source struct {
	opts    SourceOptions
	logger  *slog.Logger
	factory informers.SharedInformerFactory
	// stopInformers ends the informers (Wait, or a failed start).
	stopInformers context.CancelFunc
	services      corelisters.ServiceLister
	pods          corelisters.PodLister
	slices        cache.Indexer

	kick chan struct{} // capacity 1: dirty work is pending
	done chan struct{}

	mu      sync.Mutex
	watched map[string]*serviceState // by NAME.NAMESPACE
	dirty   map[string]bool          // watched services to recompute
	// The catalog holds every service. catalogDirty names the services
	// whose entries to recompute; catalogAll (at start) means all.
	catalogDirty   map[string]bool
	catalogAll     bool
	catalog        control.Catalog
	catalogChanged chan struct{}
}

type serviceState struct {
	refs    int
	set     *control.EndpointSet
	changed chan struct{}
}

var _ control.Source = (*Source)(nil)

// StartSource starts the informers and returns once their caches are in
// sync. Cancelling ctx stops the Source; Wait waits for it.
func StartSource(ctx context.Context, client kubernetes.Interface, opts SourceOptions) (*Source, error) {
	if err := identity.CheckTrustDomain(opts.TrustDomain); err != nil {
		return nil, err
	}
	if opts.InboundPort == 0 {
		opts.InboundPort = DefaultInboundPort
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// Only what Source reads is kept; managed fields are most of an
	// object's size.
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripManagedFields))
	s := &Source{
		opts:           opts,
		logger:         opts.Logger,
		factory:        factory,
		kick:           make(chan struct{}, 1),
		done:           make(chan struct{}),
		watched:        make(map[string]*serviceState),
		dirty:          make(map[string]bool),
		catalogDirty:   make(map[string]bool),
		catalogAll:     true,
		catalog:        control.Catalog{},
		catalogChanged: make(chan struct{}),
	}
	svcInf := factory.Core().V1().Services()
	podInf := factory.Core().V1().Pods()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{byService: sliceServiceKeys, byPod: slicePodKeys}); err != nil {
		return nil, fmt.Errorf("kube: endpointslice indexers: %w", err)
	}
	s.services, s.pods, s.slices = svcInf.Lister(), podInf.Lister(), sliceInf.Informer().GetIndexer()

	onService := func(obj any) {
		if svc, ok := unwrap(obj).(*corev1.Service); ok {
			s.markDirty(svc.Name + "." + svc.Namespace)
		}
	}
	onSlice := func(obj any) {
		if sl, ok := unwrap(obj).(*discoveryv1.EndpointSlice); ok {
			if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
				s.markDirty(name + "." + sl.Namespace)
			}
		}
	}
	onPod := func(obj any) {
		pod, ok := unwrap(obj).(*corev1.Pod)
		if !ok {
			return
		}
		objs, _ := s.slices.ByIndex(byPod, pod.Namespace+"/"+pod.Name)
		for _, o := range objs {
			onSlice(o)
		}
	}
	for _, h := range []struct {
		inf cache.SharedIndexInformer
		fn  func(any)
	}{{svcInf.Informer(), onService}, {sliceInf.Informer(), onSlice}, {podInf.Informer(), onPod}} {
		fn := h.fn
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    fn,
			UpdateFunc: func(old, cur any) { fn(old); fn(cur) },
			DeleteFunc: fn,
		}); err != nil {
			return nil, fmt.Errorf("kube: event handler: %w", err)
		}
	}
	// The informers get a context of their own: Shutdown waits for them
	// to stop, so a failed start must end them itself (with the caller's
	// context still live, Shutdown would wait for ever: a forbidden kind
	// hung here instead of failing after SyncTimeout).
	informerCtx, stopInformers := context.WithCancel(ctx)
	s.stopInformers = stopInformers
	factory.Start(informerCtx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, opts.SyncTimeout)
	defer cancel()
	for typ, ok := range factory.WaitForCacheSync(syncCtx.Done()) {
		if !ok {
			stopInformers()
			factory.Shutdown()
			return nil, fmt.Errorf("kube: the %v cache did not sync within %v: %w", typ, opts.SyncTimeout, syncCtx.Err())
		}
	}
	go s.run(ctx)
	return s, nil
}

// Wait waits until the Source has stopped after its context ended.
func (s *Source) Wait() {
	<-s.done
	s.stopInformers()
	s.factory.Shutdown()
}

func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// unwrap returns the object of a deletion tombstone.
func unwrap(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func sliceServiceKeys(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || sl.Labels[discoveryv1.LabelServiceName] == "" {
		return nil, nil
	}
	return []string{sl.Namespace + "/" + sl.Labels[discoveryv1.LabelServiceName]}, nil
}

func slicePodKeys(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var keys []string
	for _, ep := range sl.Endpoints {
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
			ns := ref.Namespace
			if ns == "" {
				ns = sl.Namespace
			}
			keys = append(keys, ns+"/"+ref.Name)
		}
	}
	return keys, nil
}

func (s *Source) markDirty(service string) {
	s.mu.Lock()
	if s.watched[service] != nil {
		s.dirty[service] = true
	}
	s.catalogDirty[service] = true
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run recomputes what events made dirty until ctx ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	for {
		s.mu.Lock()
		for name := range s.dirty {
			if st := s.watched[name]; st != nil {
				s.publish(st, s.compute(name))
			}
		}
		clear(s.dirty)
		s.updateCatalog()
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
	}
}

// publish installs set if it differs from st's. Called with s.mu held.
func (s *Source) publish(st *serviceState, set *control.EndpointSet) {
	if setEqual(st.set, set) {
		return
	}
	st.set = set
	close(st.changed)
	st.changed = make(chan struct{})
}

// Subscribe follows service (NAME.NAMESPACE).
func (s *Source) Subscribe(service string) control.Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.watched[service]
	if st == nil {
		st = &serviceState{set: s.compute(service), changed: make(chan struct{})}
		s.watched[service] = st
	}
	st.refs++
	return &subscription{s: s, name: service, st: st}
}

type subscription struct {
	s      *Source
	name   string
	st     *serviceState
	closed bool
}

func (sub *subscription) Current() (*control.EndpointSet, <-chan struct{}) {
	sub.s.mu.Lock()
	defer sub.s.mu.Unlock()
	return sub.st.set, sub.st.changed
}

func (sub *subscription) Close() {
	sub.s.mu.Lock()
	defer sub.s.mu.Unlock()
	if sub.closed {
		return
	}
	sub.closed = true
	if sub.st.refs--; sub.st.refs == 0 {
		delete(sub.s.watched, sub.name)
	}
}

// Catalog returns the current catalog of every service.
func (s *Source) Catalog() (control.Catalog, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.catalog, s.catalogChanged
}

// compute builds the endpoint set of service NAME.NAMESPACE from the
// caches. An endpoint is served only when its pod is known, since the
// identity the peer must present comes from the pod's service account and
// is never guessed; its readiness is the EndpointSlice's.
func (s *Source) compute(service string) *control.EndpointSet {
	name, ns, _ := strings.Cut(service, ".")
	if _, err := s.services.Services(ns).Get(name); err != nil {
		if !apierrors.IsNotFound(err) {
			s.logger.Warn("kube: reading service from cache", "service", service, "error", err)
		}
		return &control.EndpointSet{}
	}
	set := &control.EndpointSet{Exists: true, Endpoints: map[string]*controlpb.Endpoint{}}
	objs, _ := s.slices.ByIndex(byService, ns+"/"+name)
	for _, obj := range objs {
		sl := obj.(*discoveryv1.EndpointSlice)
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := slicePorts(sl)
		for _, ep := range sl.Endpoints {
			out, ok := s.endpoint(service, sl, ep, ports)
			if !ok {
				continue
			}
			key := control.EndpointKey(out)
			if prev := set.Endpoints[key]; prev != nil {
				// The same peer in two slices: one endpoint, serving
				// the ports of both, ready only if both say so.
				out.Ready = out.Ready && prev.Ready
				for _, p := range prev.Ports {
					if !slices.ContainsFunc(out.Ports, func(q *controlpb.Port) bool { return proto.Equal(p, q) }) {
						out.Ports = append(out.Ports, p)
					}
				}
			}
			set.Endpoints[key] = out
		}
	}
	return set
}

func (s *Source) endpoint(service string, sl *discoveryv1.EndpointSlice, ep discoveryv1.Endpoint, ports []*controlpb.Port) (*controlpb.Endpoint, bool) {
	ref := ep.TargetRef
	if ref == nil || ref.Kind != "Pod" || len(ep.Addresses) == 0 {
		s.logger.Debug("kube: endpoint without a pod is not served", "service", service, "slice", sl.Name)
		return nil, false
	}
	podNS := ref.Namespace
	if podNS == "" {
		podNS = sl.Namespace
	}
	pod, err := s.pods.Pods(podNS).Get(ref.Name)
	if err != nil {
		s.logger.Debug("kube: endpoint of an unknown pod is not served", "service", service, "pod", podNS+"/"+ref.Name)
		return nil, false
	}
	port := s.opts.InboundPort
	if v, ok := pod.Annotations[AnnotationInboundPort]; ok {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			s.logger.Warn("kube: bad inbound port annotation; pod not served", "pod", podNS+"/"+pod.Name, "value", v)
			return nil, false
		}
		port = p
	}
	weight := uint32(1)
	if v, ok := pod.Annotations[AnnotationWeight]; ok {
		w, err := strconv.ParseUint(v, 10, 32)
		if err != nil || w < 1 || w > 10000 {
			s.logger.Warn("kube: bad weight annotation; weight 1", "pod", podNS+"/"+pod.Name, "value", v)
		} else {
			weight = uint32(w)
		}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	id, err := identity.ParseID(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", s.opts.TrustDomain, pod.Namespace, sa))
	if err != nil {
		s.logger.Warn("kube: pod's service account makes no SPIFFE ID; not served", "pod", podNS+"/"+pod.Name, "error", err)
		return nil, false
	}
	out := &controlpb.Endpoint{
		Address:  net.JoinHostPort(ep.Addresses[0], strconv.Itoa(port)),
		Identity: id.String(),
		Weight:   weight,
		Ports:    slices.Clone(ports),
		PodIp:    ep.Addresses[0],
		// Unset means ready (the EndpointSlice API's rule for consumers).
		Ready: ep.Conditions.Ready == nil || *ep.Conditions.Ready,
	}
	if ep.Zone != nil {
		out.Zone = *ep.Zone
	}
	return out, true
}

func slicePorts(sl *discoveryv1.EndpointSlice) []*controlpb.Port {
	var ports []*controlpb.Port
	for _, p := range sl.Ports {
		if p.Port == nil {
			continue
		}
		out := &controlpb.Port{Port: uint32(*p.Port), Protocol: "TCP"}
		if p.Name != nil {
			out.Name = *p.Name
		}
		if p.Protocol != nil {
			out.Protocol = string(*p.Protocol)
		}
		ports = append(ports, out)
	}
	return ports
}

// updateCatalog recomputes the catalog entries of the dirty services and
// publishes a new catalog (a copy: published ones are immutable) if any
// changed. Called with s.mu held.
func (s *Source) updateCatalog() {
	if !s.catalogAll && len(s.catalogDirty) == 0 {
		return
	}
	names := s.catalogDirty
	if s.catalogAll {
		svcs, err := s.services.List(labels.Everything())
		if err != nil {
			s.logger.Warn("kube: listing services from cache", "error", err)
			return
		}
		names = make(map[string]bool, len(svcs))
		for _, svc := range svcs {
			names[svc.Name+"."+svc.Namespace] = true
		}
	}
	var next control.Catalog
	for name := range names {
		cur, ok := s.catalogService(name)
		prev, had := s.catalog[name]
		if ok == had && (!ok || proto.Equal(prev, cur)) {
			continue
		}
		if next == nil {
			next = maps.Clone(s.catalog)
		}
		if ok {
			next[name] = cur
		} else {
			delete(next, name)
		}
	}
	s.catalogAll = false
	clear(s.catalogDirty)
	if next != nil {
		s.catalog = next
		close(s.catalogChanged)
		s.catalogChanged = make(chan struct{})
	}
}

// catalogService builds the catalog entry of service NAME.NAMESPACE: its
// cluster IPs, ports and every endpoint compute serves, ready or not.
func (s *Source) catalogService(service string) (*controlpb.Service, bool) {
	name, ns, _ := strings.Cut(service, ".")
	svc, err := s.services.Services(ns).Get(name)
	if err != nil {
		if !apierrors.IsNotFound(err) {
			s.logger.Warn("kube: reading service from cache", "service", service, "error", err)
		}
		return nil, false
	}
	out := &controlpb.Service{Name: service}
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			out.VirtualIps = append(out.VirtualIps, ip)
		}
	}
	set := s.compute(service)
	for _, ep := range set.Endpoints {
		out.Endpoints = append(out.Endpoints, ep)
	}
	slices.SortFunc(out.Endpoints, func(a, b *controlpb.Endpoint) int {
		return strings.Compare(control.EndpointKey(a), control.EndpointKey(b))
	})
	for _, p := range svc.Spec.Ports {
		sp := &controlpb.ServicePort{Name: p.Name, Port: uint32(p.Port), Protocol: string(p.Protocol)}
		if sp.Protocol == "" {
			sp.Protocol = string(corev1.ProtocolTCP)
		}
		sp.TargetPort = targetPort(p, out.Endpoints)
		out.Ports = append(out.Ports, sp)
	}
	return out, true
}

// targetPort is the port on the endpoints that service port p maps to:
// its number, or for a named target port the number the EndpointSlices
// resolved it to (slice ports carry the service port's name); 0 when
// unknown, which consumers read as p's own port.
func targetPort(p corev1.ServicePort, eps []*controlpb.Endpoint) uint32 {
	if p.TargetPort.Type == intstr.Int {
		return uint32(max(p.TargetPort.IntVal, 0))
	}
	for _, ep := range eps {
		for _, q := range ep.GetPorts() {
			if q.GetName() == p.Name {
				return q.GetPort()
			}
		}
	}
	return 0
}

func setEqual(a, b *control.EndpointSet) bool {
	if a.Exists != b.Exists || len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for k, ep := range a.Endpoints {
		if other, ok := b.Endpoints[k]; !ok || !proto.Equal(ep, other) {
			return false
		}
	}
	return true
}
