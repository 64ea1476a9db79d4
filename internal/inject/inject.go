// Package inject adds the quicmesh sidecar to Kubernetes workloads given
// as YAML: the proxy container, the `quicmesh init` container that
// redirects the pod's TCP through it, and the projected ServiceAccount
// token the proxy certifies with (`quicmesh inject`, docs/control-plane.md,
// "Injection").
//
// Objects are handled as generic maps, not client-go's types, for two
// reasons: the sidecar binary that carries `quicmesh inject` must not link
// k8s.io (cmd/quicmesh's deps test), and a rewriting tool must keep every
// field it does not know (a newer API version's) exactly as it was, which
// typed structs would drop.
package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/quicmesh/quicmesh/internal/intercept"
)

// Names of what Inject adds; an object that has them already is
// re-injected in place, never duplicated.
const (
	ProxyContainer = "quicmesh-proxy"
	InitContainer  = "quicmesh-init"
	TokenVolume    = "quicmesh-token"
	CAVolume       = "quicmesh-ca-root"

	// AnnotationInject on a pod template (or Pod): "disabled" leaves it
	// untouched.
	AnnotationInject = "quicmesh.io/inject"
	// AnnotationInboundPort is internal/control/kube's: the pod's mesh
	// port. (Not imported: that package links client-go.)
	AnnotationInboundPort = "quicmesh.io/inbound-port"

	// TokenDir is where the token volume is mounted; the token is
	// TokenDir/token, the proxy's --control-token default.
	TokenDir = "/var/run/secrets/quicmesh"
	// CADir is where the root CA ConfigMap is mounted; --control-ca is
	// CADir/ca.crt.
	CADir = "/etc/quicmesh/ca-root"
)

// Config says what to inject. Zero fields take the defaults of
// DefaultConfig.
type Config struct {
	// Image of both added containers (the quicmesh sidecar binary).
	Image string
	// Control is the control plane's HOST:PORT.
	Control string
	// Audience of the projected token: quicmesh-control's --audience.
	Audience string
	// TokenExpiration is the projected token's expirationSeconds (the
	// kubelet rotates it at 80 %; the API server's minimum is 600).
	TokenExpiration int64
	// CAConfigMap holds ca.crt, the root the control plane chains to; it
	// must exist in each workload's namespace.
	CAConfigMap string
	// ProxyUID the proxy runs as; `quicmesh init` exempts its traffic.
	ProxyUID int64
	// MeshPort (UDP, QUIC) and AdminPort (HTTP: /ready, /live) of the
	// proxy.
	MeshPort, AdminPort int
	// Intercept adds the `quicmesh init` container that redirects the
	// pod's TCP through the proxy.
	Intercept bool
	// Routes are the proxy's --route SERVICE=APP_ADDR: what it serves
	// from the pod's app to the mesh.
	Routes []string
}

// DefaultConfig is what `quicmesh inject` uses without flags; it matches
// deploy/kubernetes.
func DefaultConfig() Config {
	return Config{
		Image:           "ghcr.io/quicmesh/quicmesh:latest",
		Control:         "quicmesh-control.quicmesh.svc:4180",
		Audience:        "quicmesh-control",
		TokenExpiration: 3600,
		CAConfigMap:     "quicmesh-ca-root",
		ProxyUID:        2102,
		MeshPort:        4143,
		AdminPort:       4191,
		Intercept:       true,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Image == "" {
		c.Image = d.Image
	}
	if c.Control == "" {
		c.Control = d.Control
	}
	if c.Audience == "" {
		c.Audience = d.Audience
	}
	if c.TokenExpiration == 0 {
		c.TokenExpiration = d.TokenExpiration
	}
	if c.CAConfigMap == "" {
		c.CAConfigMap = d.CAConfigMap
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = d.ProxyUID
	}
	if c.MeshPort == 0 {
		c.MeshPort = d.MeshPort
	}
	if c.AdminPort == 0 {
		c.AdminPort = d.AdminPort
	}
	return c
}

// Validate reports a configuration that would make a pod that cannot work.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.ProxyUID < 1 {
		return fmt.Errorf("proxy UID %d: the proxy must not run as root", c.ProxyUID)
	}
	for _, p := range []int{c.MeshPort, c.AdminPort} {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d: want 1 to 65535", p)
		}
	}
	if c.MeshPort == c.AdminPort {
		return fmt.Errorf("mesh and admin port are both %d", c.MeshPort)
	}
	if c.TokenExpiration < 600 {
		return fmt.Errorf("token expiration %d s: the API server's minimum is 600", c.TokenExpiration)
	}
	return nil
}

// Result counts what Inject did.
type Result struct {
	Injected, Skipped, Other int
}

// docSep splits a YAML stream into documents.
var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// Inject reads a YAML stream (one or more documents) and returns it with
// the sidecar added to every pod template: Pods, Deployments,
// StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs,
// CronJobs, and the items of a List. Other objects and empty documents
// are kept (re-encoded); a template annotated quicmesh.io/inject:
// disabled is left as it is. Re-injecting replaces what an earlier
// injection added, so the result of Inject on its own output is the same
// output.
func Inject(in []byte, cfg Config) ([]byte, Result, error) {
	var res Result
	if err := cfg.Validate(); err != nil {
		return nil, res, err
	}
	cfg = cfg.withDefaults()
	var out bytes.Buffer
	n := 0
	for i, doc := range docSep.Split(string(in), -1) {
		if len(bytes.TrimSpace([]byte(doc))) == 0 {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj, useNumber); err != nil {
			return nil, res, fmt.Errorf("document %d: %w", i+1, err)
		}
		if obj == nil { // only comments
			continue
		}
		if err := injectObject(obj, cfg, &res); err != nil {
			return nil, res, fmt.Errorf("document %d (%s %s): %w", i+1, str(obj, "kind"), str(get(obj, "metadata"), "name"), err)
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, res, fmt.Errorf("document %d: encoding: %w", i+1, err)
		}
		if n > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
		n++
	}
	return out.Bytes(), res, nil
}

func useNumber(d *json.Decoder) *json.Decoder {
	d.UseNumber()
	return d
}

func injectObject(obj map[string]any, cfg Config, res *Result) error {
	var podSpecPath []string // from obj to the pod's metadata+spec holder
	switch str(obj, "kind") {
	case "List":
		items, _ := obj["items"].([]any)
		for _, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				return errors.New("a List item is not an object")
			}
			if err := injectObject(m, cfg, res); err != nil {
				return err
			}
		}
		return nil
	case "Pod":
		podSpecPath = nil
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job":
		podSpecPath = []string{"spec", "template"}
	case "CronJob":
		podSpecPath = []string{"spec", "jobTemplate", "spec", "template"}
	default:
		res.Other++
		return nil
	}
	pod := obj
	for _, k := range podSpecPath {
		next, ok := pod[k].(map[string]any)
		if !ok {
			return fmt.Errorf("no %s", k)
		}
		pod = next
	}
	if str(get(get(pod, "metadata"), "annotations"), AnnotationInject) == "disabled" {
		res.Skipped++
		return nil
	}
	spec, ok := pod["spec"].(map[string]any)
	if !ok {
		return errors.New("the pod template has no spec")
	}
	if err := injectPod(spec, cfg); err != nil {
		return err
	}
	// The control plane serves this pod's mesh address as pod IP + this
	// port (its --inbound-port is the default for pods without it).
	meta, _ := pod["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		pod["metadata"] = meta
	}
	ann, _ := meta["annotations"].(map[string]any)
	if ann == nil {
		ann = map[string]any{}
		meta["annotations"] = ann
	}
	ann[AnnotationInboundPort] = strconv.Itoa(cfg.MeshPort)
	res.Injected++
	return nil
}

// injectPod adds the sidecar to a PodSpec, first removing what an earlier
// injection added.
func injectPod(spec map[string]any, cfg Config) error {
	containers, err := list(spec, "containers")
	if err != nil {
		return err
	}
	if len(containers) == 0 {
		return errors.New("the pod has no containers")
	}
	inits, err := list(spec, "initContainers")
	if err != nil {
		return err
	}
	volumes, err := list(spec, "volumes")
	if err != nil {
		return err
	}
	// What an earlier injection added goes, so re-injecting replaces it
	// (with this configuration) instead of adding a second copy.
	apps := without(containers, ProxyContainer)
	otherInits := without(inits, InitContainer)
	otherVolumes := without(volumes, TokenVolume, CAVolume)
	if len(apps) == 0 {
		return errors.New("the pod has no container but the sidecar")
	}

	// The proxy goes first: containers start in order, so it is up (not
	// yet ready) before the app's first connection.
	spec["containers"] = append([]any{proxyContainer(cfg, apps)}, apps...)
	if cfg.Intercept {
		// Last of the init containers: the others (say, one that fetches
		// configuration) run before their TCP is redirected to a proxy
		// that is not up yet.
		otherInits = append(otherInits, initContainer(cfg))
	}
	if len(otherInits) > 0 {
		spec["initContainers"] = otherInits
	} else {
		delete(spec, "initContainers")
	}
	// A projected service-account token needs the pod's account named:
	// the API server refuses it otherwise (a cluster's ServiceAccount
	// admission plugin fills in "default", but only if it runs), so name
	// the account the pod gets anyway.
	if str(spec, "serviceAccountName") == "" && str(spec, "serviceAccount") == "" {
		spec["serviceAccountName"] = "default"
	}
	spec["volumes"] = append(otherVolumes,
		map[string]any{
			"name": TokenVolume,
			"projected": map[string]any{"sources": []any{map[string]any{
				"serviceAccountToken": map[string]any{
					"audience":          cfg.Audience,
					"expirationSeconds": cfg.TokenExpiration,
					"path":              "token",
				},
			}}},
		},
		map[string]any{
			"name":      CAVolume,
			"configMap": map[string]any{"name": cfg.CAConfigMap},
		},
	)
	return nil
}

func proxyContainer(cfg Config, apps []any) map[string]any {
	args := []any{
		"proxy",
		"--control", cfg.Control,
		"--control-ca", CADir + "/ca.crt",
		"--control-token", TokenDir + "/token",
		"--inbound", "0.0.0.0:" + strconv.Itoa(cfg.MeshPort),
		// The kubelet probes /ready and /live on the pod IP.
		"--admin", "0.0.0.0:" + strconv.Itoa(cfg.AdminPort),
	}
	if cfg.Intercept {
		// The listeners `quicmesh init` redirects the pod's TCP to: without
		// them the app's connections would meet closed ports.
		args = append(args,
			"--transparent", "127.0.0.1:"+strconv.Itoa(intercept.DefaultOutboundPort),
			"--plain-inbound", "0.0.0.0:"+strconv.Itoa(intercept.DefaultInboundPort))
		// Peers on the transparent path may reach the app on the ports
		// its containers declare, and no other.
		if ports := appPorts(apps); ports != "" {
			args = append(args, "--app-ports", ports)
		}
	}
	for _, r := range cfg.Routes {
		args = append(args, "--route", r)
	}
	probe := func(path string) map[string]any {
		return map[string]any{"httpGet": map[string]any{"path": path, "port": cfg.AdminPort}, "periodSeconds": 5}
	}
	return map[string]any{
		"name":  ProxyContainer,
		"image": cfg.Image,
		"args":  args,
		"ports": []any{
			map[string]any{"name": "quicmesh-mesh", "containerPort": cfg.MeshPort, "protocol": "UDP"},
			// The TCP fallback transport serves the same port number.
			map[string]any{"name": "quicmesh-tcp", "containerPort": cfg.MeshPort, "protocol": "TCP"},
			map[string]any{"name": "quicmesh-admin", "containerPort": cfg.AdminPort, "protocol": "TCP"},
		},
		// Not ready, and serving nothing, until certified.
		"readinessProbe": probe("/ready"),
		"livenessProbe":  probe("/live"),
		"volumeMounts": []any{
			map[string]any{"name": TokenVolume, "mountPath": TokenDir, "readOnly": true},
			map[string]any{"name": CAVolume, "mountPath": CADir, "readOnly": true},
		},
		"securityContext": map[string]any{
			"runAsUser":                cfg.ProxyUID,
			"runAsNonRoot":             true,
			"allowPrivilegeEscalation": false,
			"readOnlyRootFilesystem":   true,
			"capabilities":             map[string]any{"drop": []any{"ALL"}},
		},
	}
}

// appPorts is the TCP ports the app containers declare, comma-separated
// in order of first appearance.
func appPorts(apps []any) string {
	var out []string
	seen := map[string]bool{}
	for _, c := range apps {
		m, _ := c.(map[string]any)
		ports, _ := m["ports"].([]any)
		for _, p := range ports {
			pm, ok := p.(map[string]any)
			if !ok {
				continue
			}
			if proto, _ := pm["protocol"].(string); proto != "" && proto != "TCP" {
				continue
			}
			var n string
			switch v := pm["containerPort"].(type) {
			case json.Number:
				n = v.String()
			case float64:
				n = strconv.Itoa(int(v))
			case int:
				n = strconv.Itoa(v)
			case int64:
				n = strconv.FormatInt(v, 10)
			}
			if n != "" && n != "0" && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return strings.Join(out, ",")
}

func initContainer(cfg Config) map[string]any {
	return map[string]any{
		"name":  InitContainer,
		"image": cfg.Image,
		"args": []any{
			"init",
			"--proxy-uid", strconv.FormatInt(cfg.ProxyUID, 10),
			"--mesh-port", strconv.Itoa(cfg.MeshPort),
			"--admin-port", strconv.Itoa(cfg.AdminPort),
		},
		// iptables in the pod's network namespace: root with NET_ADMIN
		// and NET_RAW, nothing else, and only while it runs.
		"securityContext": map[string]any{
			"runAsUser":                0,
			"runAsNonRoot":             false,
			"allowPrivilegeEscalation": false,
			"readOnlyRootFilesystem":   true,
			"capabilities": map[string]any{
				"add":  []any{"NET_ADMIN", "NET_RAW"},
				"drop": []any{"ALL"},
			},
		},
	}
}

func get(m any, key string) map[string]any {
	mm, _ := m.(map[string]any)
	v, _ := mm[key].(map[string]any)
	return v
}

func str(m any, key string) string {
	mm, _ := m.(map[string]any)
	v, _ := mm[key].(string)
	return v
}

// list returns spec[key] as objects; absent is empty.
func list(spec map[string]any, key string) ([]map[string]any, error) {
	raw, ok := spec[key]
	if !ok || raw == nil {
		return nil, nil
	}
	items, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("%s is not a list", key)
	}
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		m, ok := it.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("an entry of %s is not an object", key)
		}
		out = append(out, m)
	}
	return out, nil
}

// without returns items without those named names, as []any.
func without(items []map[string]any, names ...string) []any {
	out := []any{}
	for _, it := range items {
		if !slices.Contains(names, str(it, "name")) {
			out = append(out, it)
		}
	}
	return out
}
