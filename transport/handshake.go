package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/lograte"
)

// Handshake admission defaults; see Limits.MaxHandshakes and
// Limits.RetryThreshold, and docs/security.md for the measurements behind
// them.
const (
	DefaultMaxHandshakes  = 256
	DefaultRetryThreshold = 0 // Retry every new client
)

// Reasons a handshake fails besides the identity.Reason* ones; all are
// bounded metrics labels.
const (
	// ReasonOverloaded: the listener refused the attempt because
	// MaxHandshakes were already in progress (CONNECTION_REFUSED).
	ReasonOverloaded = "overloaded"
	// ReasonDraining: the listener refused the attempt because it is
	// draining (CONNECTION_REFUSED; see Endpoint.StopListening).
	ReasonDraining = "draining"
	// ReasonRefused: a dial the peer's listener refused
	// (CONNECTION_REFUSED): it is overloaded or draining, which the wire
	// does not tell apart; either way, try another endpoint.
	ReasonRefused = "refused"
	// ReasonPeerRefused: the other side aborted the handshake, usually
	// because it did not accept our certificate.
	ReasonPeerRefused = "peer_refused"
	// ReasonTimeout: the handshake did not finish within the handshake
	// timeout, or the peer sent nothing for the dial timeout (a peer
	// that is down, frozen or partitioned away).
	ReasonTimeout = "timeout"
	// ReasonNotAccepted: the server finished its TLS handshake but closed
	// the connection instead of serving it (draining, shutting down), or
	// did not start serving it within the handshake timeout.
	ReasonNotAccepted = "not_accepted"
)

// HandshakeReason classifies a failed handshake or dial for metrics and
// logs: an identity.Reason* value when an identity check failed (ours, or
// the peer's when its close message names the reason), else one of the
// Reason* values above, else identity.ReasonOther.
func HandshakeReason(err error) string {
	if de, ok := errors.AsType[*DialError](err); ok && de.Reason != "" {
		return de.Reason
	}
	if reason := identity.ReasonOf(err); reason != identity.ReasonOther {
		return reason
	}
	var te *quic.TransportError
	var ht *quic.HandshakeTimeoutError
	// quic-go ends a handshake that heard nothing for the handshake idle
	// timeout (Limits.DialTimeout) with an IdleTimeoutError.
	var it *quic.IdleTimeoutError
	switch {
	case errors.Is(err, errNotAccepted):
		return ReasonNotAccepted
	case errors.As(err, &ht), errors.As(err, &it), errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused:
		return ReasonRefused
	case errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError():
		return ReasonPeerRefused
	}
	return identity.ReasonOther
}

var (
	errTooManyHandshakes = errors.New("transport: too many handshakes in progress")
	errListenerDraining  = errors.New("transport: draining, refusing new connections")
	errNotAccepted       = errors.New("the server did not accept the connection")
)

// handshakeGate bounds what peers can make the listener hold before they
// have proven their address and their certificate, and reports every
// refused handshake.
//
// quic-go creates a connection (three or four goroutines and tens of KiB)
// for every Initial with a new destination connection ID, and keeps it for
// up to the handshake timeout, whether the source address is real or not.
// The gate counts those connections from creation (quic.Transport's
// ConnContext) until Accept hands them over or they die, and
//   - asks quic-go to validate the source address with a Retry
//     (VerifySourceAddress) once retryAt are in progress (by default
//     always), so a spoofer, who never sees the Retry, makes the listener
//     keep no state and do no TLS work at all;
//   - refuses new connections (CONNECTION_REFUSED) beyond max, so even
//     peers with real addresses cannot hold more than max;
//   - once draining, refuses every new connection (CONNECTION_REFUSED,
//     without a Retry first), so a dialling peer learns within one round
//     trip to go elsewhere instead of waiting for its connect timeout.
type handshakeGate struct {
	max, retryAt int64
	inProgress   atomic.Int64
	draining     atomic.Bool
	observer     Observer
	logger       *slog.Logger
	refusals     *lograte.Limiter
}

func newHandshakeGate(l Limits, o Observer, logger *slog.Logger, now func() time.Time) *handshakeGate {
	return &handshakeGate{
		max:      int64(l.MaxHandshakes),
		retryAt:  int64(l.RetryThreshold),
		observer: o,
		logger:   logger,
		refusals: lograte.New(0, 0, now),
	}
}

// handshakeKey carries a *handshake in a connection's context.
type handshakeKey struct{}

// handshake is one connection the gate admitted.
type handshake struct {
	gate   *handshakeGate
	remote string
	// verified: the peer's certificate passed; a close after this is not
	// a refused handshake.
	verified atomic.Bool
	// reported: the failure was already counted and logged.
	reported atomic.Bool
	released atomic.Bool
	endGauge func()
}

// verifySourceAddress is quic.Transport.VerifySourceAddress: it is called
// for Initials without a valid token.
func (g *handshakeGate) verifySourceAddress(net.Addr) bool {
	if g.draining.Load() {
		// Refuse at once: a Retry would cost the peer a round trip for
		// nothing. A spoofer gains nothing either: the refusal is one
		// packet smaller than the Initial, and no state is kept.
		return false
	}
	if g.inProgress.Load() >= g.retryAt {
		g.observer.HandshakeRetried()
		return true
	}
	return false
}

// connContext is quic.Transport.ConnContext: it admits or refuses a new
// connection before quic-go starts its handshake.
func (g *handshakeGate) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	if g.draining.Load() {
		// Counted, not logged: the sidecar logs that it is draining.
		g.observer.HandshakeFailed(false, ReasonDraining)
		return nil, errListenerDraining
	}
	if g.inProgress.Add(1) > g.max {
		g.inProgress.Add(-1)
		g.report(info.RemoteAddr.String(), ReasonOverloaded, "", errTooManyHandshakes)
		return nil, errTooManyHandshakes
	}
	hs := &handshake{gate: g, remote: info.RemoteAddr.String(), endGauge: g.observer.HandshakeStarted()}
	ctx = context.WithValue(ctx, handshakeKey{}, hs)
	// The context ends when the connection closes or its handshake fails.
	context.AfterFunc(ctx, func() { hs.end(context.Cause(ctx)) })
	return ctx, nil
}

// accepted releases the slot of a connection Accept hands over.
func (g *handshakeGate) accepted(conn *quic.Conn) {
	if hs, ok := conn.Context().Value(handshakeKey{}).(*handshake); ok {
		hs.verified.Store(true)
		hs.release()
	}
}

func (hs *handshake) release() {
	if hs.released.CompareAndSwap(false, true) {
		hs.gate.inProgress.Add(-1)
		hs.endGauge()
	}
}

// end runs when the connection's context ends. A connection that never got
// past the peer check failed its handshake: report why, unless the
// certificate check already did.
func (hs *handshake) end(cause error) {
	wasOpen := !hs.released.Load()
	hs.release()
	if !wasOpen || hs.verified.Load() || hs.reported.Load() {
		return
	}
	var te *quic.TransportError
	if errors.As(cause, &te) && !te.Remote && te.ErrorCode == quic.ConnectionRefused {
		return // our own refusal (listener closing, accept queue full), not the peer's failure
	}
	if errors.Is(cause, quic.ErrServerClosed) {
		return
	}
	hs.gate.report(hs.remote, HandshakeReason(cause), "", cause)
}

// refused reports a peer certificate that VerifyConnection refused.
func (hs *handshake) refused(cs tls.ConnectionState, err error) {
	if hs.reported.CompareAndSwap(false, true) {
		hs.gate.report(hs.remote, HandshakeReason(err), identity.PresentedID(cs.PeerCertificates), err)
	}
}

// report counts a refused or failed inbound handshake and logs it, at
// most once per peer and reason per interval.
func (g *handshakeGate) report(remote, reason, presented string, err error) {
	g.observer.HandshakeFailed(false, reason)
	if presented == "" {
		presented = "none"
	}
	g.refusals.Log(g.logger, slog.LevelWarn, remote+"|"+reason, "inbound handshake refused",
		"peer", remote, "reason", reason, "presented_identity", presented, "error", err)
}

// serverTLSConfig wraps identity.ServerConfig so that every refusal of a
// peer certificate is reported with the peer's address and the identity
// it presented: the per-connection config is built in GetConfigForClient,
// where the connection's context (and so its handshake) is known.
func (g *handshakeGate) serverTLSConfig(base *tls.Config) *tls.Config {
	verify := base.VerifyConnection
	base.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		hs, ok := chi.Context().Value(handshakeKey{}).(*handshake)
		if !ok {
			return nil, nil // not admitted by the gate: base config, still fail closed
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				hs.refused(cs, err)
			} else {
				hs.verified.Store(true)
			}
			return err
		}
		return c, nil
	}
	return base
}
