package main

import (
	"fmt"
	"io"
	"os"

	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/inject"
)

const injectUsage = `Usage: quicmesh inject [-f FILE] [flags] > injected.yaml

Reads Kubernetes YAML (one or more documents; FILE or - for stdin) and
writes it with the quicmesh sidecar added to every pod template (Pod,
Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
Job, CronJob, List items): the proxy container (certified by the control
plane with a projected ServiceAccount token), the 'quicmesh init'
container that redirects the pod's TCP through it (--intercept), the
token volume and the root CA ConfigMap volume. Other objects are copied.
Re-injecting an injected file replaces the sidecar instead of adding a
second one; a template annotated quicmesh.io/inject: disabled is left as
it is. Comments and key order are not kept (the output is sorted, as
kubectl's). docs/control-plane.md, "Injection".
`

func runInject(args []string, stdout, stderr io.Writer) int {
	c := cli.New("quicmesh inject", injectUsage, stdout, stderr)
	d := inject.DefaultConfig()
	file := c.Flags.String("f", "-", "YAML file to read; - is stdin")
	cfg := inject.Config{}
	c.Flags.StringVar(&cfg.Image, "image", d.Image, "image of the sidecar and init containers")
	c.Flags.StringVar(&cfg.Control, "control", d.Control, "the control plane's HOST:PORT")
	c.Flags.StringVar(&cfg.Audience, "audience", d.Audience, "audience of the projected token (quicmesh-control's --audience)")
	c.Flags.Int64Var(&cfg.TokenExpiration, "token-expiration", d.TokenExpiration, "projected token lifetime in seconds (at least 600)")
	c.Flags.StringVar(&cfg.CAConfigMap, "ca-configmap", d.CAConfigMap, "ConfigMap (in the workload's namespace) whose ca.crt is the root the control plane chains to")
	c.Flags.Int64Var(&cfg.ProxyUID, "proxy-uid", d.ProxyUID, "UID the proxy runs as (exempt from redirection)")
	c.Flags.IntVar(&cfg.MeshPort, "mesh-port", d.MeshPort, "the proxy's mesh (QUIC, UDP) port")
	c.Flags.IntVar(&cfg.AdminPort, "admin-port", d.AdminPort, "the proxy's admin port (/ready, /live probes)")
	c.Flags.BoolVar(&cfg.Intercept, "intercept", d.Intercept, "add the 'quicmesh init' container redirecting the pod's TCP through the proxy")
	c.Flags.Func("route", "SERVICE=APP_ADDR the proxy serves from the pod's app (repeatable), e.g. web.default=127.0.0.1:8080", func(s string) error {
		cfg.Routes = append(cfg.Routes, s)
		return nil
	})
	if code, ok := c.Parse(args); !ok {
		return code
	}
	// inject.Config takes 0 as "the default"; on the command line a 0
	// is a mistake to name, not to replace silently.
	if cfg.ProxyUID < 1 {
		return c.Fail("--proxy-uid %d: the proxy must not run as root", cfg.ProxyUID)
	}
	for _, p := range []struct {
		flag string
		port int
	}{{"mesh-port", cfg.MeshPort}, {"admin-port", cfg.AdminPort}} {
		if p.port < 1 || p.port > 65535 {
			return c.Fail("--%s %d: want a port from 1 to 65535", p.flag, p.port)
		}
	}
	var (
		in  []byte
		err error
	)
	if *file == "-" {
		in, err = io.ReadAll(os.Stdin)
	} else {
		in, err = os.ReadFile(*file)
	}
	if err != nil {
		return c.Fail("-f: %v", err)
	}
	out, res, err := inject.Inject(in, cfg)
	if err != nil {
		return c.Fail("%s: %v", *file, err)
	}
	if _, err := stdout.Write(out); err != nil {
		return c.Fail("writing: %v", err)
	}
	fmt.Fprintf(stderr, "quicmesh inject: %d pod templates injected, %d disabled by annotation, %d other objects copied\n", res.Injected, res.Skipped, res.Other)
	return cli.ExitOK
}
