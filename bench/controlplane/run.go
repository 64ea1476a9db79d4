package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/quicmesh/quicmesh/bench/internal/procfs"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/kubetest"
)

const (
	trustDomain = "cpbench.test"
	audience    = "quicmesh-control"
	// workers bounds the object creations and sidecar connections in
	// flight (a rollout starts many sidecars at once, not all).
	workers = 16
)

// Config sizes a run.
type Config struct {
	// Namespace holds the objects the run creates.
	Namespace                                        string
	Services, Endpoints, Sidecars, WatchesPerSidecar int
	Index                                            bool
	Idle, Steady, Churn                              time.Duration
	Rate                                             float64
	ControlBin                                       string `json:"-"`
}

func (c Config) check() error {
	switch {
	case c.Namespace == "":
		return errors.New("-namespace is required")
	case c.Services < 1 || c.Endpoints < 1 || c.Sidecars < 1:
		return errors.New("-services, -endpoints and -sidecars must be at least 1")
	case c.Endpoints > 1000:
		return errors.New("-endpoints: at most 1000 (one EndpointSlice per service)")
	case c.Services*c.Endpoints > 250*250:
		return errors.New("-services × -endpoints: at most 62,500 pod IPs")
	case c.WatchesPerSidecar < 0 || c.WatchesPerSidecar > c.Services:
		return errors.New("-watches: between 0 and -services")
	case c.Rate <= 0:
		return errors.New("-rate must be positive")
	}
	return nil
}

// Run measures the control plane against cluster with the objects of cfg,
// keeping its files in dir.
func Run(ctx context.Context, cluster *kubetest.Cluster, dir string, cfg Config, logger *slog.Logger) (*Result, error) {
	res := &Result{Config: cfg, Cores: numCPU()}
	start := time.Now()
	objs, err := populate(ctx, cluster.Admin, cfg)
	if err != nil {
		return nil, err
	}
	res.PopulateSeconds = time.Since(start).Seconds()
	logger.Info("objects created", "services", cfg.Services, "pods", cfg.Services*cfg.Endpoints, "seconds", res.PopulateSeconds)

	// The control plane runs as its own service account with exactly the
	// grants of deploy/kubernetes/rbac.yaml.
	restCfg, err := cluster.Bind(ctx, "quicmesh", "quicmesh-control", kube.ClusterRoleRules)
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := kubetest.WriteKubeconfig(restCfg, kubeconfig); err != nil {
		return nil, err
	}
	ca, err := identity.NewCA(trustDomain, 0)
	if err != nil {
		return nil, fmt.Errorf("controlplane: CA: %w", err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "ca")); err != nil {
		return nil, err
	}
	cp, err := startControl(ctx, cfg.ControlBin, dir, kubeconfig)
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	res.SyncSeconds = cp.syncTime.Seconds()
	logger.Info("quicmesh-control serving", "pid", cp.cmd.Process.Pid, "addr", cp.addr, "sync_seconds", res.SyncSeconds)

	s := newSampler(cp.cmd.Process.Pid)
	defer s.close()
	phase := func(name string, fn func() error) error {
		p, err := s.phase(name, fn)
		if p != nil {
			res.Phases = append(res.Phases, *p)
			logger.Info("phase", "name", p.Name, "seconds", p.Seconds, "cpu_percent", p.CPUPercent, "rss_mib", p.RSSMiB, "peak_rss_mib", p.PeakRSSMiB)
		}
		return err
	}
	// The start itself, as far as /proc still tells it: CPU since exec
	// and the peak so far.
	if u, err := procfs.ReadUsage("/proc", cp.cmd.Process.Pid); err == nil {
		res.Phases = append(res.Phases, Phase{Name: "start (to caches synced)", Seconds: res.SyncSeconds,
			CPUSeconds: ticksToSeconds(u.Ticks), CPUPercent: 100 * ticksToSeconds(u.Ticks) / res.SyncSeconds,
			RSSMiB: kib(u.RSSKiB), PeakRSSMiB: kib(u.HWMKiB), HWMMiB: kib(u.HWMKiB), Load1Start: cp.load1, Load1End: load1()})
	}
	if err := phase("idle, no sidecar", func() error { return sleep(ctx, cfg.Idle) }); err != nil {
		return res, err
	}
	fleet := newFleet(cfg, cluster, cp.addr, ca)
	defer fleet.close()
	if err := phase(fmt.Sprintf("%d sidecars certify and connect", cfg.Sidecars), func() error { return fleet.connect(ctx) }); err != nil {
		return res, err
	}
	res.IndexSnapshotBytes = fleet.snapshotBytes.Load()
	if err := phase("steady, all watching", func() error { return sleep(ctx, cfg.Steady) }); err != nil {
		return res, err
	}
	var churn *ChurnStats
	if err := phase(fmt.Sprintf("churn, %g updates/s", cfg.Rate), func() error {
		churn, err = fleet.churn(ctx, cluster.Admin, objs, cfg)
		return err
	}); err != nil {
		return res, err
	}
	res.Churn = churn
	if churn != nil && churn.Changes > 0 {
		churn.CPUMillisPerChange = 1000 * res.Phases[len(res.Phases)-1].CPUSeconds / float64(churn.Changes)
	}
	if err := fleet.err(); err != nil {
		return res, err
	}
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// populate creates the namespace, one ServiceAccount per simulated
// sidecar, and per service a Service (port 80 to 8080), its pods (one
// ServiceAccount name per service, so each service is one identity) and
// one EndpointSlice of them, all ready. It returns the slices as created,
// which the churn updates.
func populate(ctx context.Context, client kubernetes.Interface, cfg Config) ([]*discoveryv1.EndpointSlice, error) {
	namespace := cfg.Namespace
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("controlplane: namespace: %w", err)
	}
	create := metav1.CreateOptions{}
	if err := parallel(ctx, cfg.Sidecars, func(i int) error {
		_, err := client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sidecarAccount(i)}}, create)
		return err
	}); err != nil {
		return nil, fmt.Errorf("controlplane: service accounts: %w", err)
	}
	if err := parallel(ctx, cfg.Services*cfg.Endpoints, func(p int) error {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: podName(p), Namespace: namespace, Labels: map[string]string{"app": serviceName(p / cfg.Endpoints)}},
			Spec: corev1.PodSpec{
				ServiceAccountName: serviceName(p / cfg.Endpoints),
				Containers:         []corev1.Container{{Name: "app", Image: "app"}},
			},
		}
		_, err := client.CoreV1().Pods(namespace).Create(ctx, pod, create)
		return err
	}); err != nil {
		return nil, fmt.Errorf("controlplane: pods: %w", err)
	}
	objs := make([]*discoveryv1.EndpointSlice, cfg.Services)
	err := parallel(ctx, cfg.Services, func(i int) error {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: serviceName(i), Namespace: namespace},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": serviceName(i)},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}
		if _, err := client.CoreV1().Services(namespace).Create(ctx, svc, create); err != nil {
			return err
		}
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: serviceName(i) + "-a", Namespace: namespace, Labels: map[string]string{discoveryv1.LabelServiceName: serviceName(i)}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for j := range cfg.Endpoints {
			p := i*cfg.Endpoints + j
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{podIP(p)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: podName(p), Namespace: namespace},
				Zone:       ptr.To("zone-a"),
			})
		}
		out, err := client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, sl, create)
		objs[i] = out
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("controlplane: services and endpoint slices: %w", err)
	}
	return objs, nil
}

func serviceName(i int) string    { return fmt.Sprintf("svc-%04d", i) }
func sidecarAccount(i int) string { return fmt.Sprintf("sidecar-%04d", i) }
func podName(p int) string        { return fmt.Sprintf("pod-%05d", p) }

// podIP is pod p's address: 10.244.0.0/16 holds 62,500 of them.
func podIP(p int) string { return fmt.Sprintf("10.244.%d.%d", p/250, p%250+1) }

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					cancel(err)
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// control is quicmesh-control running as a child process.
type control struct {
	cmd      *exec.Cmd
	addr     string
	syncTime time.Duration
	load1    float64 // at its start
	done     chan struct{}
	logPath  string
}

// startControl runs bin against kubeconfig and waits until it logs that it
// serves (its caches are in sync). Its log goes to dir/control.log.
func startControl(ctx context.Context, bin, dir, kubeconfig string) (*control, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("controlplane: free port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	c := &control{addr: addr, done: make(chan struct{}), logPath: filepath.Join(dir, "control.log"), load1: load1()}
	logFile, err := os.Create(c.logPath)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	c.cmd = exec.Command(bin, "--listen", addr, "--ca-dir", filepath.Join(dir, "ca"), "--kubeconfig", kubeconfig, "--audience", audience)
	c.cmd.Stdout = logFile
	pr, pw := io.Pipe()
	c.cmd.Stderr = pw
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := time.Now()
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("controlplane: starting %s: %w", bin, err)
	}
	serving := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if strings.Contains(sc.Text(), "quicmesh-control serving") {
				select {
				case serving <- time.Since(started):
				default:
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		c.cmd.Wait()
		pw.Close()
		logFile.Close()
		close(c.done)
	}()
	select {
	case c.syncTime = <-serving:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("controlplane: quicmesh-control exited before serving: %s", c.tail())
	case <-time.After(5 * time.Minute):
		c.stop()
		return nil, fmt.Errorf("controlplane: quicmesh-control not serving after 5 minutes: %s", c.tail())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

func (c *control) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *control) tail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// buildControl builds cmd/quicmesh-control into dir.
func buildControl(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "quicmesh-control")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/quicmesh/quicmesh/cmd/quicmesh-control")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("controlplane: go build quicmesh-control: %w\n%s", err, b)
	}
	return out, nil
}
