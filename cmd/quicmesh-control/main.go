// Command quicmesh-control is the control plane: it watches the Kubernetes
// API (Services, EndpointSlices, Pods; one watch per kind) and serves
// sidecars over gRPC the endpoints of the services they call (Discovery)
// and short-lived certificates for the service account their token proves
// (Identity). docs/control-plane.md describes it.
//
// It is its own binary, not a `quicmesh control` subcommand, because it
// links client-go and the sidecar binary, deployed next to every app,
// must not (docs/control-plane.md, "Binaries", has the sizes).
package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/cli"
	"github.com/quicmesh/quicmesh/internal/control"
	"github.com/quicmesh/quicmesh/internal/control/kube"
)

const usage = `Usage: quicmesh-control [flags]

The quicmesh control plane: Discovery and Identity over gRPC (TLS 1.3),
from the Kubernetes API. In a pod it uses the pod's service account; out
of a cluster, --kubeconfig.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil))
}

// run runs the control plane until ctx ends. ready, if not nil, receives
// the listening address once the caches are in sync and it serves.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) int {
	c := cli.New("quicmesh-control", usage, stdout, stderr)
	listen := c.Flags.String("listen", ":4180", "gRPC listen address")
	caDir := c.Flags.String("ca-dir", "", "directory holding ca.crt and ca.key of the trust domain's CA, and root.crt if it is an intermediate ('quicmesh ca intermediate') (required)")
	idFlag := c.Flags.String("id", "", "the control plane's own SPIFFE ID (default spiffe://TRUST_DOMAIN/ns/quicmesh/sa/quicmesh-control)")
	lifetime := c.Flags.Duration("cert-lifetime", identity.DefaultCertLifetime, "lifetime of workload certificates")
	audience := c.Flags.String("audience", "quicmesh-control", "audience the sidecars' ServiceAccount tokens must be issued for")
	inboundPort := c.Flags.Int("inbound-port", kube.DefaultInboundPort, "sidecar inbound (QUIC) port of pods without the "+kube.AnnotationInboundPort+" annotation")
	kubeconfig := c.Flags.String("kubeconfig", "", "kubeconfig file (default: in-cluster service account)")
	logLevel := c.Flags.String("log-level", "info", "debug, info, warn or error")
	if code, ok := c.Parse(args); !ok {
		return code
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return c.Fail("--log-level %q: %v", *logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *caDir == "" {
		return c.Fail("--ca-dir is required")
	}
	if *lifetime < time.Minute {
		return c.Fail("--cert-lifetime %s: must be at least 1m", *lifetime)
	}
	if *inboundPort < 1 || *inboundPort > 65535 {
		return c.Fail("--inbound-port %d: not a port", *inboundPort)
	}
	ca, err := identity.LoadCADir(*caDir)
	if err != nil {
		return c.Fail("--ca-dir: %v", err)
	}
	id := identity.ID{TrustDomain: ca.TrustDomain(), Path: "/ns/quicmesh/sa/quicmesh-control"}
	if *idFlag != "" {
		if id, err = identity.ParseID(*idFlag); err != nil {
			return c.Fail("--id: %v", err)
		}
		if id.TrustDomain != ca.TrustDomain() {
			return c.Fail("--id %s: not of the CA's trust domain %s", id, ca.TrustDomain())
		}
	}
	var cfg *rest.Config
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return c.Fail("--kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return c.Fail("--kubeconfig: %v", err)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return c.Fail("--listen: %v", err)
	}
	defer lis.Close()

	srcCtx, stopSource := context.WithCancel(ctx)
	defer stopSource()
	src, err := kube.StartSource(srcCtx, client, kube.SourceOptions{TrustDomain: ca.TrustDomain(), InboundPort: *inboundPort, Logger: logger})
	if err != nil {
		return c.Fail("watching the Kubernetes API: %v", err)
	}
	return serve(ctx, c, logger, lis, control.Config{
		CA: ca, ID: id, Lifetime: *lifetime,
		Reviewer: kube.NewTokenReviewer(client, *audience),
		Source:   src, Logger: logger,
	}, func() { stopSource(); src.Wait() }, ready)
}

func serve(ctx context.Context, c *cli.Command, logger *slog.Logger, lis net.Listener, cfg control.Config, stopSource func(), ready chan<- string) int {
	defer stopSource()
	srv, err := control.NewServer(cfg)
	if err != nil {
		return c.Fail("%v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	logger.Info("quicmesh-control serving", "addr", lis.Addr().String(), "id", cfg.ID.String(), "cert_lifetime", cfg.Lifetime)
	if ready != nil {
		ready <- lis.Addr().String()
	}
	select {
	case <-ctx.Done():
		srv.Stop()
		<-errc
		return cli.ExitOK
	case err := <-errc:
		srv.Stop()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return c.Fail("serving: %v", err)
		}
		return cli.ExitOK
	}
}
