package outbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/lograte"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// discoveryError says in one sentence why discovery gave no endpoints for
// service. The resolvers' own wrapping repeats the name at every layer
// ("resolving ...: resolve ...: resolve ..."); the sentinel stays
// reachable for errors.Is.
func discoveryError(service string, err error) error {
	switch {
	case errors.Is(err, discovery.ErrUnknownService):
		return sentence{fmt.Sprintf("no service %q in discovery", service), err}
	case errors.Is(err, discovery.ErrNoEndpoints):
		return sentence{fmt.Sprintf("service %q has no endpoints", service), err}
	}
	return fmt.Errorf("outbound: discovering %q: %w", service, err)
}

// sentence is an error whose text replaces that of the error it wraps.
type sentence struct {
	text string
	err  error
}

func (e sentence) Error() string { return e.text }
func (e sentence) Unwrap() error { return e.err }

// failureLog logs requests and tunnels that failed, at most once per
// message, service, peer (when one was reached) and reason per interval:
// during a partition every request fails the same way, and the line
// after the interval counts those suppressed.
type failureLog struct {
	log     *slog.Logger
	limiter *lograte.Limiter
}

// failed logs err; args are more key-value pairs, of which "peer" (the
// peer's address) is also part of the rate limit's key.
func (l failureLog) failed(msg, service string, err error, args ...any) {
	reason := failureReason(err)
	if errors.Is(err, discovery.ErrUnknownService) || errors.Is(err, discovery.ErrNoEndpoints) {
		reason = "no_endpoints"
	} else if errors.Is(err, meshcode.ErrPeerUnavailable) && reason == identity.ReasonOther {
		reason = "peer_unavailable"
	}
	key := msg + "|" + service + "|" + reason
	for i := 0; i+1 < len(args); i += 2 {
		if args[i] == "peer" {
			key += "|" + fmt.Sprint(args[i+1])
		}
	}
	args = append([]any{"service", service, "reason", reason}, args...)
	l.limiter.Log(l.log, slog.LevelWarn, key, msg, append(args, "error", err)...)
}

// failureReason is the bounded reason a failed request or tunnel is logged
// with: the one the transport gave a failed dial (a handshake reason), an
// identity check's, "timeout" when our own time ran out, else
// identity.ReasonOther.
func failureReason(err error) string {
	if r, ok := errors.AsType[interface {
		error
		FailureReason() string
	}](err); ok && r.FailureReason() != "" {
		return r.FailureReason()
	}
	if reason := identity.ReasonOf(err); reason != identity.ReasonOther {
		return reason
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return identity.ReasonOther
}
