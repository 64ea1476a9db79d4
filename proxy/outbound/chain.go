package outbound

import (
	"io"
	"net"
	"net/http"

	"github.com/quicmesh/quicmesh/internal/httpx"
)

// The outbound paths, each listed outermost layer first: a unit of work
// from the app walks down the list, its response or error comes back up.
// This file is the one place that sets the order (docs/design.md,
// "Outbound layers").

// httpPath is the path of the HTTP requests on one listener (bound to a
// service, or "" for the HTTP proxy listener).
func (p *Proxy) httpPath(bound string) http.Handler {
	requests := layered[stage](forwarder{connector: p.connector, timeout: p.cfg.ConnectTimeout},
		func(next stage) stage { return measured{p.cfg.Metrics, next} },
		func(next stage) stage { return grpcDeadline{next} },
		func(next stage) stage { return errorResponses{bound, who(p.cfg.Name), p.failures, next} },
		// The policy: inside the error responses, so its refusals and
		// timeouts become proxy errors. Failure accrual is in the
		// balancer (Config.Balancer).
		func(next stage) stage { return breaker{p.policies, p.cfg.Metrics, next} }, // 503 beyond MaxPending; finds the policy
		func(next stage) stage { return timeouts{next} },                           // Timeout, ResponseHeaderTimeout → 504
		func(next stage) stage { return retries{p.log, p.cfg.Metrics, next} },      // unprocessed, dead connection, RetryOn within budget
	)
	tunnels := func(opening func(net.Conn, *http.Request, io.Writer) error) routed {
		return httpTunnel{opener: p.opener(), splicer: p.splicer(), bound: bound, who: who(p.cfg.Name), opening: opening}.serve
	}
	return layered[http.Handler](router{bound: bound, who: who(p.cfg.Name), requests: requests, connect: tunnels(answerConnect), upgrade: tunnels(replayUpgrade)},
		httpx.Guard,      // refuses malformed and smuggling-prone requests before anything reads them
		skipResetStreams, // a stream reset before it started (Rapid Reset) gets no work
		p.shed.wrap,      // 503 beyond MaxInFlight
		// router: the target service; CONNECT and upgrades become tunnels
	)
}

// tcpPath is the path of opaque app connections: open a tunnel (connect
// with retry), splice, reset the app's connection on failure.
func (p *Proxy) tcpPath() tcpHandler {
	return tcpForward{opener: p.opener(), splicer: p.splicer(), failures: p.failures}
}

func (p *Proxy) opener() tunnelOpener {
	return tunnelOpener{connector: p.connector, timeout: p.cfg.ConnectTimeout, log: p.log}
}

func (p *Proxy) splicer() splicer { return splicer{metrics: p.cfg.Metrics, log: p.log} }

// layered wraps inner in layers, the first outermost.
func layered[T any](inner T, layers ...func(T) T) T {
	for i := len(layers) - 1; i >= 0; i-- {
		inner = layers[i](inner)
	}
	return inner
}
