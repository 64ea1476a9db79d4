package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/quicmesh/quicmesh/discovery"
	discoverycp "github.com/quicmesh/quicmesh/discovery/controlplane"
	"github.com/quicmesh/quicmesh/identity"
	identitycp "github.com/quicmesh/quicmesh/identity/controlplane"
	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/controlclient"
	"github.com/quicmesh/quicmesh/internal/controlpb"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

const td = "cluster.test"

// controlPlane is quicmesh-control's run, in process, as its own service
// account with the RBAC of deploy/kubernetes.
type controlPlane struct {
	t      *testing.T
	args   []string
	addr   string
	cancel context.CancelFunc
	done   chan int
	log    *logFile
}

// logFile collects the server's log in a file the test reads on failure.
type logFile struct{ *os.File }

func (l *logFile) String() string {
	b, _ := os.ReadFile(l.Name())
	return string(b)
}

func startControl(t *testing.T, c *kubetest.Cluster, caDir, listen string, extra ...string) *controlPlane {
	t.Helper()
	kc := kubetest.Kubeconfig(t, c.BoundClient(t, "quicmesh", "quicmesh-control", kube.ClusterRoleRules))
	cp := &controlPlane{t: t, args: append([]string{"--listen", listen, "--ca-dir", caDir, "--kubeconfig", kc, "--log-level", "debug"}, extra...)}
	cp.start()
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start() {
	cp.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	f, err := os.CreateTemp(cp.t.TempDir(), "control-*.log")
	if err != nil {
		cp.t.Fatal(err)
	}
	cp.t.Cleanup(func() { f.Close() })
	cp.cancel, cp.done, cp.log = cancel, make(chan int, 1), &logFile{f}
	go func() { cp.done <- run(ctx, cp.args, cp.log, cp.log, ready) }()
	select {
	case cp.addr = <-ready:
	case code := <-cp.done:
		cp.t.Fatalf("quicmesh-control exited with %d:\n%s", code, cp.log)
	case <-time.After(2 * time.Minute):
		cp.t.Fatalf("quicmesh-control did not start:\n%s", cp.log)
	}
}

func (cp *controlPlane) stop() {
	if cp.cancel == nil {
		return
	}
	cp.cancel()
	if code := <-cp.done; code != 0 {
		cp.t.Errorf("quicmesh-control exited with %d:\n%s", code, cp.log)
	}
	cp.cancel = nil
}

// sidecar is what `quicmesh proxy --control` builds: the identity
// provider and the discovery cache over one connection.
type sidecar struct {
	prov  *identitycp.Provider
	cache *discovery.Cache
	// resolveFailed receives when the cache fails to re-resolve a
	// service whose watch ended: it is serving its last set with the
	// control plane unreachable.
	resolveFailed chan struct{}
}

// onMessage is a slog handler that signals when a record with its message
// is logged.
type onMessage struct {
	msg string
	ch  chan struct{}
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h onMessage) WithGroup(string) slog.Handler            { return h }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

func newSidecar(t *testing.T, addr string, anchors *x509.CertPool, tokenFile string) *sidecar {
	t.Helper()
	controlID := identity.MustParseID("spiffe://" + td + "/ns/quicmesh/sa/quicmesh-control")
	// Two connections: Certify needs no client certificate, and Discovery
	// requires one, presented at the handshake, so its connection is
	// made (lazily, at the first Watch) once the provider has one.
	idConn, err := controlclient.Dial(addr, anchors, controlID, nil)
	if err != nil {
		t.Fatal(err)
	}
	prov, err := identitycp.Start(controlpb.NewIdentityClient(idConn), identitycp.Options{TokenFile: tokenFile, RenewAt: 0.1, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	discConn, err := controlclient.Dial(addr, anchors, controlID, prov.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	resolveFailed := make(chan struct{}, 1)
	cache := discovery.NewCache(discoverycp.New(controlpb.NewDiscoveryClient(discConn)),
		slog.New(onMessage{msg: "discovery: re-resolve failed; retrying", ch: resolveFailed}))
	t.Cleanup(func() {
		cache.Close()
		discConn.Close()
		prov.Close()
		idConn.Close()
	})
	return &sidecar{prov: prov, cache: cache, resolveFailed: resolveFailed}
}

func waitReady(t *testing.T, p *identitycp.Provider, within time.Duration) {
	t.Helper()
	select {
	case <-p.Ready():
	case <-time.After(within):
		t.Fatal("the sidecar got no certificate")
	}
}

func addrs(eps []discovery.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Addr)
	}
	slices.Sort(out)
	return out
}

// waitEndpoints waits, at most a second, until the sidecar's cache holds
// exactly want for service.
func waitEndpoints(t *testing.T, sc *sidecar, service string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	var got []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		eps, err := sc.cache.Endpoints(ctx, service)
		cancel()
		got = addrs(eps)
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints of %s: %v (%v), want %v within 1 s", service, got, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func slice(ns string, ready ...bool) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for i, r := range ready {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("192.0.2.%d", 10+i)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(r)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprintf("echo-%d", i), Namespace: ns},
		})
	}
	return sl
}

// TestControlPlane runs quicmesh-control against a real API server and
// the sidecar's control-plane identity provider and resolver against it:
// certification by token, endpoint changes within a second, not-ready
// endpoints withheld, and the control plane's absence: sidecars keep
// their certificates and endpoints, a new one stays without identity, and
// all resume when it is back.
func TestControlPlane(t *testing.T) {
	c := kubetest.Get(t)
	caDir := t.TempDir()
	ca, err := identity.NewCA(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(caDir); err != nil {
		t.Fatal(err)
	}
	cp := startControl(t, c, caDir, "127.0.0.1:0", "--cert-lifetime", "1m")
	// The restart must find the control plane where sidecars know it.
	cp.args[1] = cp.addr

	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "web")
	c.ServiceAccount(t, ns, "echo")
	tokenFile := func(sa string) string {
		path := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(path, []byte(c.Token(t, ns, sa, "quicmesh-control", time.Hour)), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	web := newSidecar(t, cp.addr, ca.Pool(), tokenFile("web"))
	waitReady(t, web.prov, 30*time.Second)
	if id, err := identity.LocalID(web.prov); err != nil || id.String() != "spiffe://"+td+"/ns/"+ns+"/sa/web" {
		t.Fatalf("the web sidecar is %v (%v)", id, err)
	}

	ctx := context.Background()
	if _, err := c.Admin.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("echo-%d", i), Namespace: ns},
			Spec: corev1.PodSpec{ServiceAccountName: "echo", Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		if _, err := c.Admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	slices := c.Admin.DiscoveryV1().EndpointSlices(ns)
	update := func(sl *discoveryv1.EndpointSlice) {
		t.Helper()
		cur, err := slices.Get(ctx, sl.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sl.ResourceVersion = cur.ResourceVersion
		if _, err := slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := slices.Create(ctx, slice(ns, true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	service := "echo." + ns
	waitEndpoints(t, web, service, "192.0.2.10:4143")
	eps, _ := web.cache.Endpoints(ctx, service)
	if eps[0].Identity != "spiffe://"+td+"/ns/"+ns+"/sa/echo" {
		t.Fatalf("endpoint identity %q", eps[0].Identity)
	}

	update(slice(ns, true, true, true))
	waitEndpoints(t, web, service, "192.0.2.10:4143", "192.0.2.11:4143", "192.0.2.12:4143")
	update(slice(ns, true, true, true, false))
	// The fourth endpoint is not ready: never in the set. A change after
	// it proves the not-ready one was seen and withheld.
	update(slice(ns, true, false, true, false))
	waitEndpoints(t, web, service, "192.0.2.10:4143", "192.0.2.12:4143")

	t.Run("renewal", func(t *testing.T) {
		first, _ := web.prov.Certificate()
		changed := web.prov.Changed()
		select {
		case <-changed:
		case <-time.After(30 * time.Second):
			t.Fatal("no renewal within 30 s of a 1 min certificate renewed at 10 %")
		}
		next, _ := web.prov.Certificate()
		if !next.Leaf.NotAfter.After(first.Leaf.NotAfter) {
			t.Fatal("the renewed certificate does not last longer")
		}
	})

	t.Run("control plane down", func(t *testing.T) {
		before, _ := web.prov.Certificate()
		cp.stop()
		late := newSidecar(t, cp.addr, ca.Pool(), tokenFile("echo"))
		// Meanwhile: the endpoint set changes, the running sidecar keeps
		// what it had, the late one gets no certificate. The cache has
		// seen the control plane go once a re-resolve has failed; from
		// then on it serves its last set, which must still be the old
		// one.
		update(slice(ns, true, true, true))
		select {
		case <-web.resolveFailed:
		case <-time.After(30 * time.Second):
			t.Fatal("the sidecar's cache did not notice the control plane was gone within 30 s")
		}
		if eps, err := web.cache.Endpoints(ctx, service); err != nil || fmt.Sprint(addrs(eps)) != "[192.0.2.10:4143 192.0.2.12:4143]" {
			t.Fatalf("with the control plane down the sidecar serves %v (%v), want its last set", addrs(eps), err)
		}
		if now, err := web.prov.Certificate(); err != nil || now.Leaf.NotAfter.Before(before.Leaf.NotAfter) {
			t.Fatalf("the running sidecar lost its certificate: %v", err)
		}
		select {
		case <-late.prov.Ready():
			t.Fatal("a sidecar was certified with the control plane down")
		default:
		}
		if _, err := late.prov.Certificate(); err == nil {
			t.Fatal("the late sidecar has a certificate")
		}

		cp.start()
		waitReady(t, late.prov, 30*time.Second)
		// The resolver re-resolves with back-off (at most 10 s) and gets
		// the whole set again, with the change it missed.
		deadline := time.Now().Add(15 * time.Second)
		for {
			eps, err := web.cache.Endpoints(ctx, service)
			if err == nil && len(eps) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the restart: %v (%v), want 3 endpoints", addrs(eps), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
