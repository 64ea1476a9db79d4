// Package kubernetes_test checks the manifests of deploy/kubernetes
// against a real API server (internal/kubetest): every object passes
// server-side apply with dryRun=All and strict field validation, the
// control plane's ClusterRole is exactly what internal/control/kube
// needs, and the control plane runs with those grants.
package kubernetes_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/quicmesh/quicmesh/internal/control/kube"
	"github.com/quicmesh/quicmesh/internal/inject"
	"github.com/quicmesh/quicmesh/internal/kubetest"
	"github.com/quicmesh/quicmesh/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// readObjects decodes every document of the YAML files.
func readObjects(t *testing.T, files ...string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decode(t, f, b)...)
	}
	return objs
}

func decode(t *testing.T, name string, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for i, doc := range docSep.Split(string(b), -1) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("%s document %d: %v", name, i+1, err)
		}
		if m != nil {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	return objs
}

// applier server-side-applies objects with dryRun=All.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, c *kubetest.Cluster) *applier {
	dyn, err := dynamic.NewForConfig(c.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.AdminConfig)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// dryRun applies obj as `kubectl apply --server-side --dry-run=server
// --validate=strict` would: the API server runs defaulting, validation
// and admission and stores nothing.
func (a *applier) dryRun(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		ri = a.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	force := true
	_, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		DryRun: []string{metav1.DryRunAll}, FieldManager: "quicmesh-manifest-test", Force: &force, FieldValidation: "Strict",
	})
	return err
}

func manifests(t *testing.T) []string {
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests (%v)", err)
	}
	return append(files, filepath.Join("example", "web.yaml"), filepath.Join("example", "web-injected.yaml"))
}

// TestManifestsDryRun: every object of every manifest, and what
// quicmesh inject makes of the example, passes server-side dry-run.
func TestManifestsDryRun(t *testing.T) {
	c := kubetest.Get(t)
	ctx := testkit.HangCtx(t)
	a := newApplier(t, c)
	objs := readObjects(t, manifests(t)...)
	// Namespaces first, as a dry run (they do not exist yet); then for
	// real, since a namespaced object's dry run needs its namespace.
	var namespaces []string
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			if err := a.dryRun(ctx, o); err != nil {
				t.Fatalf("Namespace %s: %v", o.GetName(), err)
			}
		}
		if ns := o.GetNamespace(); ns != "" && !slices.Contains(namespaces, ns) {
			namespaces = append(namespaces, ns)
		}
	}
	for _, ns := range namespaces {
		if _, err := c.Admin.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
			continue
		}
		if _, err := c.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kinds := map[string]int{}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue
		}
		if err := a.dryRun(ctx, o); err != nil {
			t.Errorf("%s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
		kinds[o.GetKind()]++
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the manifests", k)
		}
	}
	// The same path refuses what is wrong, so the passes above mean
	// something: an unknown field, and a Deployment whose selector does
	// not match its template.
	bad := decode(t, "bad", []byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespace: quicmesh}\nautomount: true\n"))[0]
	// (Server-side apply reports it as "field not declared in schema";
	// strict validation of other requests as "unknown field".)
	if err := a.dryRun(ctx, bad); err == nil || !strings.Contains(err.Error(), "automount") {
		t.Errorf("an unknown field passed: %v", err)
	}
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			o = o.DeepCopy()
			unstructured.SetNestedField(o.Object, "other", "spec", "selector", "matchLabels", "app.kubernetes.io/name")
			unstructured.SetNestedField(o.Object, "other", "spec", "selector", "matchLabels", "app")
			if err := a.dryRun(ctx, o); err == nil {
				t.Errorf("Deployment %s with a selector that does not match passed", o.GetName())
			}
			break
		}
	}
}

// TestInjectedDryRun: quicmesh inject's output for every kind it handles
// passes server-side dry-run, injected once and twice.
func TestInjectedDryRun(t *testing.T) {
	c := kubetest.Get(t)
	ctx := testkit.HangCtx(t)
	a := newApplier(t, c)
	ns := c.Namespace(t)
	in := strings.ReplaceAll(`apiVersion: v1
kind: Pod
metadata: {name: p, namespace: NS}
spec:
  containers: [{name: app, image: app:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: s, namespace: NS}
spec:
  serviceName: s
  selector: {matchLabels: {app: s}}
  template:
    metadata: {labels: {app: s}}
    spec:
      initContainers: [{name: setup, image: setup:1}]
      containers: [{name: app, image: app:1}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d, namespace: NS}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers: [{name: app, image: app:1}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: j, namespace: NS}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: app, image: app:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: cj, namespace: NS}
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: app, image: app:1}]
`, "NS", ns)
	out, res, err := inject.Inject([]byte(in), inject.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if res.Injected != 5 {
		t.Fatalf("injected %d, want 5", res.Injected)
	}
	twice, _, err := inject.Inject(out, inject.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range decode(t, "injected", twice) {
		if err := a.dryRun(ctx, o); err != nil {
			t.Errorf("injected %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
}

// TestRBACMatchesSource: the ClusterRole of rbac.yaml is
// kube.ClusterRoleRules, bound to the service account the control
// plane's Deployment runs as; and a client with exactly the manifest's
// rules can run the Source (list + watch of the three kinds) and review
// a token with the audience the Deployment and inject agree on.
func TestRBACMatchesSource(t *testing.T) {
	objs := readObjects(t, manifests(t)...)
	var (
		role    rbacv1.ClusterRole
		binding rbacv1.ClusterRoleBinding
		saName  string
		args    []string
	)
	for _, o := range objs {
		switch {
		case o.GetKind() == "ClusterRole":
			fromUnstructured(t, o, &role)
		case o.GetKind() == "ClusterRoleBinding":
			fromUnstructured(t, o, &binding)
		case o.GetKind() == "Deployment" && o.GetName() == "quicmesh-control":
			saName, _, _ = unstructured.NestedString(o.Object, "spec", "template", "spec", "serviceAccountName")
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			for _, a := range cs[0].(map[string]any)["args"].([]any) {
				args = append(args, a.(string))
			}
		}
	}
	if !reflect.DeepEqual(role.Rules, kube.ClusterRoleRules) {
		t.Errorf("rbac.yaml's ClusterRole rules\n%+v\ndiffer from kube.ClusterRoleRules\n%+v", role.Rules, kube.ClusterRoleRules)
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != saName || binding.Subjects[0].Namespace != "quicmesh" {
		t.Errorf("the binding %+v does not bind ClusterRole %s to the Deployment's service account quicmesh/%s", binding, role.Name, saName)
	}
	d := inject.DefaultConfig()
	if !slices.Contains(args, "--audience="+d.Audience) {
		t.Errorf("quicmesh-control's args %v lack --audience=%s, the audience inject gives sidecars' tokens", args, d.Audience)
	}
	if !strings.HasPrefix(d.Control, "quicmesh-control.quicmesh.svc:") || !slices.Contains(args, "--listen=:"+strings.TrimPrefix(d.Control, "quicmesh-control.quicmesh.svc:")) {
		t.Errorf("inject's control address %s is not the Service and port of control-plane.yaml (args %v)", d.Control, args)
	}

	c := kubetest.Get(t)
	ctx := testkit.HangCtx(t)
	client, err := kubernetes.NewForConfig(c.BoundClient(t, "quicmesh-rbac-test", "control", role.Rules))
	if err != nil {
		t.Fatal(err)
	}
	srcCtx, stop := context.WithCancel(ctx)
	src, err := kube.StartSource(srcCtx, client, kube.SourceOptions{TrustDomain: "cluster.local", SyncTimeout: time.Until(testkit.HangGuard(t))})
	if err != nil {
		stop()
		t.Fatalf("the Source with the manifest's grants: %v", err)
	}
	stop()
	src.Wait()
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "web")
	sa, err := kube.NewTokenReviewer(client, d.Audience).Review(ctx, c.Token(t, ns, "web", d.Audience, time.Hour))
	if err != nil || sa.Namespace != ns || sa.Name != "web" {
		t.Fatalf("token review with the manifest's grants: %+v, %v", sa, err)
	}
	// And one rule less is not enough: the role is not larger than needed.
	for i := range role.Rules {
		fewer := slices.Delete(slices.Clone(role.Rules), i, i+1)
		cl, err := kubernetes.NewForConfig(c.BoundClient(t, "quicmesh-rbac-test", "fewer"+strings.Repeat("x", i), fewer))
		if err != nil {
			t.Fatal(err)
		}
		if !needed(ctx, t, c, cl, d.Audience) {
			t.Errorf("rule %d (%v) is not needed", i, role.Rules[i])
		}
	}
}

// needed reports whether the Source or the token review fails with
// client's grants.
func needed(ctx context.Context, t *testing.T, c *kubetest.Cluster, client kubernetes.Interface, audience string) bool {
	srcCtx, stop := context.WithCancel(ctx)
	defer stop()
	// A forbidden list retries until the sync timeout: a few seconds
	// tell a forbidden kind from a granted one.
	src, err := kube.StartSource(srcCtx, client, kube.SourceOptions{TrustDomain: "cluster.local", SyncTimeout: 3 * time.Second})
	if err != nil {
		return true
	}
	stop()
	src.Wait()
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "web")
	_, err = kube.NewTokenReviewer(client, audience).Review(ctx, c.Token(t, ns, "web", audience, time.Hour))
	return err != nil
}

func fromUnstructured(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatal(err)
	}
}
