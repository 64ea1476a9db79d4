package inject

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      initContainers:
      - name: fetch
        image: busybox
      containers:
      - name: web
        image: web:1
        futureField: {kept: true}
      volumes:
      - name: data
        emptyDir: {}
`

// pod decodes the pod spec at path in document doc of out.
func podSpec(t *testing.T, out []byte, doc int, path ...string) map[string]any {
	t.Helper()
	docs := docSep.Split(string(out), -1)
	if doc >= len(docs) {
		t.Fatalf("output has %d documents, want at least %d:\n%s", len(docs), doc+1, out)
	}
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(docs[doc]), &obj); err != nil {
		t.Fatal(err)
	}
	m := obj
	for _, k := range path {
		next, ok := m[k].(map[string]any)
		if !ok {
			t.Fatalf("document %d has no %s in %v", doc, k, path)
		}
		m = next
	}
	return m
}

func names(t *testing.T, spec map[string]any, key string) string {
	t.Helper()
	items, _ := spec[key].([]any)
	var n []string
	for _, it := range items {
		n = append(n, it.(map[string]any)["name"].(string))
	}
	return strings.Join(n, ",")
}

func TestInject(t *testing.T) {
	tmpl := []string{"spec", "template", "spec"}
	tests := []struct {
		name                            string
		in                              string
		cfg                             Config
		path                            []string
		doc                             int
		containers, inits, volumes      string
		injected, skipped, other, ndocs int
	}{
		{name: "deployment", in: deployment, cfg: DefaultConfig(), path: tmpl,
			containers: "quicmesh-proxy,web", inits: "fetch,quicmesh-init", volumes: "data,quicmesh-token,quicmesh-ca-root", injected: 1, ndocs: 1},
		{name: "no interception", in: deployment, cfg: Config{Intercept: false}, path: tmpl,
			containers: "quicmesh-proxy,web", inits: "fetch", volumes: "data,quicmesh-token,quicmesh-ca-root", injected: 1, ndocs: 1},
		{name: "pod", in: "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app, image: a}]\n", cfg: DefaultConfig(), path: []string{"spec"},
			containers: "quicmesh-proxy,app", inits: "quicmesh-init", volumes: "quicmesh-token,quicmesh-ca-root", injected: 1, ndocs: 1},
		{name: "cronjob", in: "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: job, image: j}]\n",
			cfg: DefaultConfig(), path: []string{"spec", "jobTemplate", "spec", "template", "spec"},
			containers: "quicmesh-proxy,job", inits: "quicmesh-init", volumes: "quicmesh-token,quicmesh-ca-root", injected: 1, ndocs: 1},
		{name: "multi-doc with others and a disabled one", in: "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n---\n# only a comment\n---\n" + deployment + "---\n" +
			"apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  template:\n    metadata:\n      annotations: {quicmesh.io/inject: disabled}\n    spec:\n      containers: [{name: db, image: d}]\n",
			cfg: DefaultConfig(), path: tmpl, doc: 1,
			containers: "quicmesh-proxy,web", inits: "fetch,quicmesh-init", volumes: "data,quicmesh-token,quicmesh-ca-root", injected: 1, skipped: 1, other: 1, ndocs: 3},
		{name: "list", in: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: DaemonSet\n  metadata: {name: d}\n  spec:\n    template:\n      spec:\n        containers: [{name: agent, image: a}]\n",
			cfg: DefaultConfig(), path: nil, injected: 1, ndocs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, res, err := Inject([]byte(tt.in), tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Injected != tt.injected || res.Skipped != tt.skipped || res.Other != tt.other {
				t.Errorf("result %+v, want injected %d skipped %d other %d", res, tt.injected, tt.skipped, tt.other)
			}
			if n := len(docSep.Split(string(out), -1)); n != tt.ndocs {
				t.Errorf("%d documents out, want %d:\n%s", n, tt.ndocs, out)
			}
			if tt.path != nil {
				spec := podSpec(t, out, tt.doc, tt.path...)
				for key, want := range map[string]string{"containers": tt.containers, "initContainers": tt.inits, "volumes": tt.volumes} {
					if got := names(t, spec, key); got != want {
						t.Errorf("%s: %q, want %q", key, got, want)
					}
				}
			}
			// Idempotent: injecting the output again changes nothing,
			// with the same or another configuration applied over it.
			again, res2, err := Inject(out, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if string(again) != string(out) {
				t.Errorf("re-injecting changed the output:\n%s\n---- first:\n%s", again, out)
			}
			if res2 != res {
				t.Errorf("re-inject result %+v, first %+v", res2, res)
			}
		})
	}
}

func TestInjectKeepsWhatItDoesNotKnow(t *testing.T) {
	out, _, err := Inject([]byte(deployment), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	spec := podSpec(t, out, 0, "spec", "template", "spec")
	web := spec["containers"].([]any)[1].(map[string]any)
	if f, _ := web["futureField"].(map[string]any); f["kept"] != true {
		t.Fatalf("an unknown field of the app's container was lost:\n%s", out)
	}
	meta := podSpec(t, out, 0, "spec", "template", "metadata")
	if meta["annotations"].(map[string]any)[AnnotationInboundPort] != "4143" {
		t.Fatalf("no %s annotation", AnnotationInboundPort)
	}
	// A large integer survives the round trip (no float64 rounding).
	big := strings.Replace(deployment, "spec:\n  selector", "spec:\n  progressDeadlineSeconds: 9007199254740993\n  selector", 1)
	out, _, err = Inject([]byte(big), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "9007199254740993") {
		t.Fatalf("large integer rewritten:\n%s", out)
	}
}

func TestInjectReconfigures(t *testing.T) {
	first, _, err := Inject([]byte(deployment), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Image, cfg.MeshPort, cfg.Intercept = "example.org/quicmesh:2", 5143, false
	second, _, err := Inject(first, cfg)
	if err != nil {
		t.Fatal(err)
	}
	spec := podSpec(t, second, 0, "spec", "template", "spec")
	if got := names(t, spec, "containers"); got != "quicmesh-proxy,web" {
		t.Fatalf("containers %q", got)
	}
	if got := names(t, spec, "initContainers"); got != "fetch" {
		t.Fatalf("init containers %q: the interception of the first injection stayed", got)
	}
	proxy := spec["containers"].([]any)[0].(map[string]any)
	if proxy["image"] != "example.org/quicmesh:2" || !strings.Contains(string(second), "0.0.0.0:5143") || strings.Contains(string(second), "0.0.0.0:4143") {
		t.Fatalf("re-injection did not take the new configuration:\n%s", second)
	}
}

func TestInjectErrors(t *testing.T) {
	tests := []struct {
		name, in string
		cfg      Config
		want     string
	}{
		{"not YAML", "kind: [", DefaultConfig(), "document 1"},
		{"no template", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n", DefaultConfig(), "document 1 (Deployment x): no template"},
		{"no containers", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n", DefaultConfig(), "no containers"},
		{"only the sidecar", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: quicmesh-proxy}]}\n", DefaultConfig(), "no container but the sidecar"},
		{"containers not a list", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: x}\n", DefaultConfig(), "containers is not a list"},
		{"root proxy", deployment, Config{ProxyUID: -1}, "must not run as root"},
		{"short token", deployment, Config{TokenExpiration: 60}, "minimum is 600"},
		{"same ports", deployment, Config{MeshPort: 4191}, "both 4191"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Inject([]byte(tt.in), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestExampleIsCurrent: deploy/kubernetes/example/web-injected.yaml is
// what quicmesh inject makes of web.yaml today.
func TestExampleIsCurrent(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "kubernetes", "example")
	in, err := os.ReadFile(filepath.Join(dir, "web.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Routes = []string{"web.demo=127.0.0.1:8080"}
	out, _, err := Inject(in, cfg)
	if err != nil {
		t.Fatal(err)
	}
	golden, err := os.ReadFile(filepath.Join(dir, "web-injected.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var body []string
	for _, line := range strings.SplitAfter(string(golden), "\n") {
		if len(body) == 0 && strings.HasPrefix(line, "#") {
			continue
		}
		body = append(body, line)
	}
	if strings.Join(body, "") != string(out) {
		t.Fatalf("web-injected.yaml is stale; regenerate it (its first line says how). quicmesh inject now makes:\n%s", out)
	}
}

// The proxy's --app-ports are the app containers' TCP ports (a UDP port
// is nobody's on the transparent path), and a pod without a named
// service account gets "default", which its projected token needs.
func TestInjectAppPortsAndAccount(t *testing.T) {
	in := `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: a
    image: a:1
    ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}, {containerPort: 9090, protocol: TCP}]
  - name: b
    image: b:1
    ports: [{containerPort: 8080}, {containerPort: 7000}]
`
	out, _, err := Inject([]byte(in), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{"- --app-ports\n    - 8080,9090,7000\n", "serviceAccountName: default\n", "- --transparent\n", "- --plain-inbound\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("injected pod lacks %q:\n%s", want, s)
		}
	}
}
