package scenario

import (
	"context"
	"time"
)

// Kinds of echo app ("quicmesh-dev echo --proto KIND") the loads use.
var (
	loopbackApps = []string{"http1", "grpc", "tcp"}
	lossyApps    = []string{"grpc", "tcp"}
)

// startApps starts one echo app of each kind, named prefix+kind, in
// network namespace ns ("" = the host's) at addresses from addr. It
// returns their addresses by kind and their processes. On the host it
// waits until each accepts connections; inside a namespace the readiness
// check of each target does that (loadGen.ready).
func startApps(ctx context.Context, sup *supervisor, devBin, prefix, ns string, kinds []string, addr func() (string, error)) (map[string]string, []*proc, error) {
	apps := map[string]string{}
	var procs []*proc
	for _, kind := range kinds {
		a, err := addr()
		if err != nil {
			return nil, procs, err
		}
		p, err := sup.start(prefix+kind, ns, nil, devBin, "echo", "--proto", kind, "--listen", a)
		if err != nil {
			return nil, procs, err
		}
		procs = append(procs, p)
		if ns == "" {
			if err := waitTCP(ctx, a, p, 10*time.Second); err != nil {
				return nil, procs, err
			}
		}
		apps[kind] = a
	}
	return apps, procs, nil
}
