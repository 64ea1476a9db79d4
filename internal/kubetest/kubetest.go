// Package kubetest runs a real Kubernetes API server for tests: etcd and
// kube-apiserver built by .ci/k8s.sh, started once per test binary, with no
// controllers and no kubelet (envtest-style). Tests create the objects a
// controller would (Namespaces, ServiceAccounts, EndpointSlices, Pod
// status) and request ServiceAccount tokens through the TokenRequest API;
// those are real signed JWTs that TokenReview validates.
//
// A test package uses it from TestMain, so one server serves all its tests
// and is stopped when they end:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }
//
// and each test calls Get, which starts the server on first use and skips
// the test, with the reason, when the binaries are not built (it fails
// instead under CI or QUICMESH_REQUIRE_K8S).
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Issuer is the service-account token issuer of the test API server.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// startTimeout bounds the start of etcd plus the API server for Start.
// /readyz answers in about 4 s on an idle 2-core machine; a loaded one is
// slower. Tests (Get) wait until their hang guard instead: at load ~35
// the start outlasted 2 minutes (the rbac/bootstrap-roles hook still
// retrying etcd requests that timed out).
const startTimeout = 2 * time.Minute

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	// Admin is a client with cluster-admin rights (a static token in
	// system:masters).
	Admin kubernetes.Interface
	// AdminConfig is Admin's configuration; copy it (rest.CopyConfig)
	// before changing it.
	AdminConfig *rest.Config

	dir   string
	procs []*process
	saKey *rsa.PrivateKey
}

var (
	once    sync.Once
	shared  *Cluster
	skipMsg string // why the cluster is not there, when it is not
	failMsg string
)

// Main runs the package's tests and then stops the cluster if one was
// started. Call it from TestMain and pass its result to os.Exit.
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// Get returns the package's cluster, starting it on first use. Without
// the binaries it skips t, or fails it when the environment says the
// tests must run (CI or QUICMESH_REQUIRE_K8S set); a cluster that fails
// to start fails t.
func Get(t testing.TB) *Cluster {
	t.Helper()
	once.Do(func() {
		bin, why := binaries()
		if bin == "" {
			if os.Getenv("CI") != "" || os.Getenv("QUICMESH_REQUIRE_K8S") != "" {
				failMsg = why + " (and CI or QUICMESH_REQUIRE_K8S is set)"
			} else {
				skipMsg = why
			}
			return
		}
		ctx, cancel := context.WithDeadline(context.Background(), hangGuard(t))
		defer cancel()
		c, err := StartContext(ctx, bin)
		if err != nil {
			failMsg = err.Error()
			return
		}
		shared = c
	})
	switch {
	case failMsg != "":
		t.Fatal("kubetest: " + failMsg)
	case skipMsg != "":
		t.Skip("kubetest: " + skipMsg)
	}
	return shared
}

// hangGuard is testkit.HangGuard, which only tests may import: shortly
// before the test binary's -timeout, or ten minutes away without one.
func hangGuard(t testing.TB) time.Time {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			return dl.Add(-min(time.Until(dl)/10, 30*time.Second))
		}
	}
	return time.Now().Add(10 * time.Minute)
}

// Binaries returns the directory holding kube-apiserver and etcd, as
// tests find it (for tools, such as bench/controlplane, that start a
// Cluster themselves), or an error saying why there is none.
func Binaries() (string, error) {
	dir, why := binaries()
	if dir == "" {
		return "", errors.New("kubetest: " + why)
	}
	return dir, nil
}

// binaries finds the directory holding kube-apiserver and etcd:
// $QUICMESH_K8S_BIN, or .ci/k8s.sh's cache if it is already built (a test
// never starts the many-minute build itself). It returns "" and the
// reason when there is none.
func binaries() (dir, why string) {
	dir = os.Getenv("QUICMESH_K8S_BIN")
	if dir == "" {
		_, self, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(self), "..", "..", ".ci", "k8s.sh")
		out, err := exec.Command("bash", script, "--cached").Output()
		if err != nil {
			return "", "QUICMESH_K8S_BIN is unset and kube-apiserver/etcd are not built: run `bash .ci/k8s.sh` (minutes, once per machine; make unit does it)"
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Sprintf("QUICMESH_K8S_BIN=%s has no %s: %v", dir, b, err)
		}
	}
	return dir, ""
}

// Start starts etcd and kube-apiserver from bin and waits until the API
// server is ready. Stop ends both and removes their data.
func Start(bin string) (*Cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return StartContext(ctx, bin)
}

// StartContext is Start waiting for the API server until ctx ends
// instead of startTimeout.
func StartContext(ctx context.Context, bin string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "quicmesh-kubetest-")
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	c := &Cluster{dir: dir}
	if err := c.start(ctx, bin); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context, bin string) error {

	etcdPorts, err := freePorts(2)
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPorts[0])
	_, err = c.run(filepath.Join(bin, "etcd"), "etcd",
		"--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(etcdPorts[1]),
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("kubetest: service-account key: %w", err)
	}
	c.saKey = saKey
	keyPath := filepath.Join(c.dir, "sa.key")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	token := make([]byte, 16)
	rand.Read(token)
	adminToken := hex.EncodeToString(token)
	tokensPath := filepath.Join(c.dir, "tokens.csv")
	if err := os.WriteFile(tokensPath, []byte(adminToken+`,kubetest-admin,kubetest-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	apiPorts, err := freePorts(1)
	if err != nil {
		return err
	}
	certDir := filepath.Join(c.dir, "certs")
	api, err := c.run(filepath.Join(bin, "kube-apiserver"), "kube-apiserver",
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPorts[0]),
		"--cert-dir", certDir,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", Issuer,
		"--service-account-key-file", keyPath,
		"--service-account-signing-key-file", keyPath,
		"--token-auth-file", tokensPath,
		"--authorization-mode", "RBAC",
		"--endpoint-reconciler-type", "none",
		// No controller creates the "default" ServiceAccount this plugin
		// waits for; tests name the ServiceAccounts they create.
		"--disable-admission-plugins", "ServiceAccount",
		"--enable-priority-and-fairness=false",
	)
	if err != nil {
		return err
	}

	cfg := &rest.Config{
		Host:        "https://127.0.0.1:" + strconv.Itoa(apiPorts[0]),
		BearerToken: adminToken,
		QPS:         1000,
		Burst:       1000,
	}
	// The self-signed serving certificate appears in cert-dir shortly
	// after start; until then the server is not ready anyway.
	for {
		pemData, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
		if err == nil && len(pemData) > 0 {
			cfg.TLSClientConfig.CAData = pemData
			break
		}
		if err := waitTick(ctx, api); err != nil {
			return fmt.Errorf("kubetest: waiting for kube-apiserver's serving certificate: %w\n%s", err, api.tail())
		}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubetest: client: %w", err)
	}
	for {
		var status int
		res := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&status)
		if res.Error() == nil && status == 200 {
			break
		}
		if err := waitTick(ctx, api); err != nil {
			return fmt.Errorf("kubetest: waiting for kube-apiserver /readyz (last: %d %v): %w\n%s", status, res.Error(), err, api.tail())
		}
	}
	c.Admin, c.AdminConfig = client, cfg
	return nil
}

// waitTick waits a little, failing early if p exited or ctx ended.
func waitTick(ctx context.Context, p *process) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(50 * time.Millisecond):
		return nil
	}
}

// Stop ends the API server and etcd and removes their files. It is safe
// to call more than once.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	c.procs = nil
	if c.dir != "" {
		os.RemoveAll(c.dir)
		c.dir = ""
	}
}

type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// run starts a server process whose output goes to a log file in c.dir.
// The process dies with the test binary (Pdeathsig), so a crashed test
// leaves no server behind.
func (c *Cluster) run(path, name string, args ...string) (*process, error) {
	logPath := filepath.Join(c.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("kubetest: starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return p, nil
}

func (p *process) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the end of the process's log, for errors.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return p.name + " log (end):\n" + string(bytes.TrimSpace(b))
}

// freePorts returns n TCP ports on 127.0.0.1 that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubetest: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Namespace creates a namespace named after t (unique per test) and
// deletes it when t ends. Nothing deletes its contents (there is no
// namespace controller); tests that need a clean slate use a new one.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	name = strings.Trim(name, "-") + "-" + hex.EncodeToString(suffix)
	ctx := context.Background()
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("kubetest: creating namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		c.Admin.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		// Admin is the package's, but a connection it opened during
		// this test would count as the test's in testkit.CheckLeaks
		// (its HTTP/2 read loop): the one it had before is closed after
		// client-go's 90 s IdleConnTimeout, which a slow test on a
		// loaded machine outlasts (bench/controlplane TestRunSmall, 547 s
		// at load ~39, leaked the read loop of the connection that
		// replaced it).
		c.CloseIdleConnections()
	})
	return name
}

// CloseIdleConnections closes the admin client's idle connections; the
// next request opens a new one.
func (c *Cluster) CloseIdleConnections() {
	if rc, ok := c.Admin.CoreV1().RESTClient().(*rest.RESTClient); ok && rc.Client != nil {
		utilnet.CloseIdleConnectionsFor(rc.Client.Transport)
	}
}

// ServiceAccount creates service account sa in namespace ns (if it does
// not exist yet).
func (c *Cluster) ServiceAccount(t testing.TB, ns, sa string) {
	t.Helper()
	_, err := c.Admin.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: creating service account %s/%s: %v", ns, sa, err)
	}
}

// Token requests a token for service account ns/sa through the
// TokenRequest API, as the kubelet does for a projected volume. The API
// server refuses expiries under 10 minutes.
func (c *Cluster) Token(t testing.TB, ns, sa, audience string, expiry time.Duration) string {
	t.Helper()
	tok, err := c.RequestToken(context.Background(), ns, sa, audience, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// RequestToken is Token returning the error.
func (c *Cluster) RequestToken(ctx context.Context, ns, sa, audience string, expiry time.Duration) (string, error) {
	secs := int64(expiry / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{audience},
		ExpirationSeconds: &secs,
	}}
	res, err := c.Admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("kubetest: token for %s/%s: %w", ns, sa, err)
	}
	if res.Status.Token == "" {
		return "", errors.New("kubetest: TokenRequest returned no token")
	}
	return res.Status.Token, nil
}

// BoundClient returns the configuration of a client acting as service
// account ns/sa, bound cluster-wide to rules and nothing else, so a
// component run with it fails if it needs more than its role grants.
func (c *Cluster) BoundClient(t testing.TB, ns, sa string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	cfg, err := c.Bind(context.Background(), ns, sa, rules)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Bind is BoundClient returning the error: it creates namespace ns and
// service account sa if needed, binds sa cluster-wide to a ClusterRole of
// rules (replacing an earlier one of the same name) and returns a client
// configuration with a token of sa for the API server.
func (c *Cluster) Bind(ctx context.Context, ns, sa string, rules []rbacv1.PolicyRule) (*rest.Config, error) {
	if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("kubetest: creating namespace %s: %w", ns, err)
	}
	if _, err := c.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("kubetest: creating service account %s/%s: %w", ns, sa, err)
	}
	name := ns + ":" + sa
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	if _, err := c.Admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := c.Admin.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("kubetest: updating cluster role %s: %w", name, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("kubetest: creating cluster role %s: %w", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}
	if _, err := c.Admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("kubetest: creating cluster role binding %s: %w", name, err)
	}
	// A token for the API server itself (its default audience is the issuer).
	token, err := c.RequestToken(ctx, ns, sa, Issuer, time.Hour)
	if err != nil {
		return nil, err
	}
	cfg := rest.AnonymousClientConfig(c.AdminConfig)
	cfg.BearerToken = token
	cfg.QPS, cfg.Burst = 1000, 1000
	return cfg, nil
}

// Kubeconfig writes cfg (a bearer-token configuration) as a kubeconfig
// file for a component run as its own process, and returns its path.
func Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := WriteKubeconfig(cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteKubeconfig is Kubeconfig writing to path.
func WriteKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.TLSClientConfig.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("kubetest: writing kubeconfig: %w", err)
	}
	return nil
}
