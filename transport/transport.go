// Package transport carries sidecar-to-sidecar traffic over mutually
// authenticated QUIC. One UDP socket (a quic.Transport) serves both the
// inbound listener and every outbound dial; outbound connections live in a
// Pool, one per peer, shared by all HTTP/3 requests and tunnel streams;
// a Server serves the connections peers open to us. The proxy sees it only
// through the interfaces it declares (docs/design.md, "The transport
// seam"); errors and codes cross the seam in transport/meshcode's terms.
package transport

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quicmesh/quicmesh/discovery"
	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// ALPN is the application protocol sidecars negotiate. It is not "h3": a
// mesh connection also carries tunnel streams, and a plain HTTP/3 client
// that reached the port by accident must not be mistaken for a sidecar.
const ALPN = "quicmesh/1"

// The mesh error codes as QUIC application error codes: a mesh code is
// sent as the QUIC code of the same value (RESET_STREAM and STOP_SENDING
// for streams, CONNECTION_CLOSE for connections), and a QUIC code read
// off the wire is reported as the mesh code of the same value (see
// meshError). docs/design.md lists them.
const (
	CodeNoError        = quic.StreamErrorCode(meshcode.NoError)
	CodeReset          = quic.StreamErrorCode(meshcode.Reset)
	CodeUnknownTarget  = quic.StreamErrorCode(meshcode.UnknownTarget)
	CodeConnectFailed  = quic.StreamErrorCode(meshcode.ConnectFailed)
	CodeBadHeader      = quic.StreamErrorCode(meshcode.BadHeader)
	CodeOverloaded     = quic.StreamErrorCode(meshcode.Overloaded)
	CodeShuttingDown   = quic.StreamErrorCode(meshcode.ShuttingDown)
	ConnCodeShutdown   = quic.ApplicationErrorCode(meshcode.ConnShutdown)
	ConnCodeIdentity   = quic.ApplicationErrorCode(meshcode.ConnIdentity)
	ConnCodePoolClosed = quic.ApplicationErrorCode(meshcode.ConnPoolClosed)
	// ConnCodeUnresponsive closes a connection the liveness watch
	// declared dead (Limits.LivenessTimeout).
	ConnCodeUnresponsive = quic.ApplicationErrorCode(meshcode.ConnUnresponsive)
)

// Limits are the QUIC knobs we set deliberately; zero values take the
// defaults documented on each field (and in docs/design.md).
type Limits struct {
	// MaxIncomingStreams bounds concurrent bidirectional streams a peer
	// may open on one connection: every HTTP request and every tunnelled
	// TCP connection is one. Default 4096: enough for 1,000+ concurrent
	// requests from a busy peer, while each idle stream costs only a few
	// hundred bytes until it carries data.
	MaxIncomingStreams int64
	// StreamReceiveWindow is the per-stream flow-control ceiling. Default
	// 8 MiB: a bulk tunnel needs one bandwidth-delay product (about 2.5 MB
	// at 2 Gbit/s and 10 ms) to run at line rate. Streams start at
	// InitialStreamReceiveWindow and grow towards it only while their
	// reader keeps up (quic-go's auto-tuning); quic-go never shrinks a
	// window, so a stream that stalls after it grew holds what it grew
	// to. StalledStreams says how many such streams the connection
	// window absorbs.
	StreamReceiveWindow uint64
	// InitialStreamReceiveWindow is what a stream may hold before its
	// reader has shown it keeps up, so what a stream that stalls before
	// it grew holds. A peer's streams return connection credit only when
	// read: the default is ConnectionReceiveWindow / (4 ×
	// MaxIncomingStreams), clamped to [4 KiB, 512 KiB] (4 KiB with the
	// defaults), so every stream the peer may open can stall holding it
	// and use up only a quarter of the connection window, leaving half of
	// it for streams that stall after they grew and the last quarter,
	// which quic-go needs read before it sends more credit, to the
	// streams that keep flowing (StalledStreams). A large message pays
	// nothing measurable for the small start (auto-tuning doubles it
	// within a few round trips; docs/benchmarks.md, "Large single
	// messages").
	InitialStreamReceiveWindow uint64
	// ConnectionReceiveWindow bounds what all streams of one peer may have
	// in flight towards us together: the per-peer memory budget for
	// QUIC receive buffers, committed only as data waits unread. Default
	// 64 MiB, granted from the start: with the default stream windows,
	// 3 streams that stall after growing to 8 MiB, on top of every other
	// stream stalling with its initial window (5 if nothing else stalls),
	// still leave the others flowing (StalledStreams; 32 MiB absorbed
	// none once the others stalled too, and 2 if nothing else stalled).
	ConnectionReceiveWindow uint64
	// DialTimeout is how long a dial waits for any answer from the
	// peer (QUIC's handshake idle timeout): a peer that is down, frozen
	// or partitioned away fails the dial within it. Default 1s (Linkerd's
	// connect timeout): a live peer answers an Initial within a round
	// trip, and the client retransmits it at its probe timeout (about
	// 300 ms before an RTT is known) several times within the second.
	// Never above HandshakeTimeout. It bounds inbound handshakes the
	// same way: the listener drops one whose client went silent for
	// this long (and any after twice this long, quic-go's handshake
	// limit). The outbound proxy's connect timeout (discovery, dial and
	// stream open together) is a different, longer bound.
	DialTimeout time.Duration
	// HandshakeTimeout bounds a whole dial, including waiting for the
	// peer to take the connection into service (default 3s): a peer
	// that answers, slowly, but does not finish is reported within it.
	HandshakeTimeout time.Duration
	// IdleTimeout is how long a connection may go without a packet from
	// the peer before it is declared dead and closed (default 5s; 1s was
	// measured to close live connections on a loaded node, see
	// docs/design.md "Failure detection"): with
	// KeepAlive, a live peer is never silent that long, so this is the
	// failure detection time of a peer that stops answering (measured
	// from the last packet received, or on a quiet connection from the
	// keep-alive PING: up to IdleTimeout + KeepAlive; docs/design.md,
	// "Failure detection"). The lower of both sides' values applies;
	// quic-go never goes below three probe timeouts.
	IdleTimeout time.Duration
	// KeepAlive: a side that has received nothing for this long sends a
	// PING (default IdleTimeout/4, 1.25 s), so a quiet connection to a
	// live peer carries under one PING and one ACK a second, and a
	// lost PING is retransmitted at the probe timeout several times
	// before IdleTimeout declares the peer dead.
	KeepAlive time.Duration
	// LivenessTimeout is the dialing side's fast failure detection:
	// while requests or tunnels are outstanding on a connection we
	// dialled, a peer that sends nothing (not even an ACK of the PINGs
	// the watch sends once it hears nothing for a quarter of this) for
	// this long is declared dead: the connection is closed, what was in
	// flight fails marked meshcode.ErrConnDead and ErrIdleTimeout, the
	// peer goes into back-off and is reported (ReasonUnresponsive).
	// Default 1s; negative disables it. It never fires for a stall of
	// this process (a poll of the watch late by half of it starts the
	// watch over), which is why it can be this much shorter than
	// IdleTimeout; three probe timeouts apply if longer. docs/design.md,
	// "Failure detection".
	LivenessTimeout time.Duration

	// MaxHandshakes caps inbound handshakes in progress (connections a
	// client has started and Accept has not yet returned); beyond it new
	// attempts are refused with CONNECTION_REFUSED. Default
	// DefaultMaxHandshakes (256): each costs tens of KiB and three or four
	// goroutines for up to HandshakeTimeout.
	MaxHandshakes int
	// RetryThreshold: a client must first prove its source address with
	// a QUIC Retry (one extra round trip) before the listener keeps any
	// state for it or does any TLS work, once this many inbound
	// handshakes are in progress. Default 0: always (docs/security.md has
	// the measurements); a positive value saves legitimate clients the
	// round trip while fewer are in progress, at the price of letting a
	// spoofer start that many handshakes.
	RetryThreshold int
}

// Failure detection defaults; see Limits and docs/design.md, "Failure
// detection", for the measurements behind them.
const (
	DefaultDialTimeout      = time.Second
	DefaultHandshakeTimeout = 3 * time.Second
	DefaultIdleTimeout      = 5 * time.Second
	DefaultLivenessTimeout  = time.Second
)

// WithDefaults returns l with every zero field set to its default, for
// another transport that takes the same limits.
func (l Limits) WithDefaults() Limits { return l.withDefaults() }

func (l Limits) withDefaults() Limits {
	if l.MaxIncomingStreams == 0 {
		l.MaxIncomingStreams = 4096
	}
	if l.StreamReceiveWindow == 0 {
		l.StreamReceiveWindow = 8 << 20
	}
	if l.ConnectionReceiveWindow == 0 {
		l.ConnectionReceiveWindow = 64 << 20
	}
	if l.InitialStreamReceiveWindow == 0 {
		streams := uint64(max(l.MaxIncomingStreams, 1))
		l.InitialStreamReceiveWindow = min(max(l.ConnectionReceiveWindow/(4*streams), 4<<10), 512<<10)
	}
	l.InitialStreamReceiveWindow = min(l.InitialStreamReceiveWindow, l.StreamReceiveWindow)
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.DialTimeout == 0 {
		l.DialTimeout = DefaultDialTimeout
	}
	l.DialTimeout = min(l.DialTimeout, l.HandshakeTimeout)
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.KeepAlive == 0 {
		l.KeepAlive = l.IdleTimeout / 4
	}
	if l.LivenessTimeout == 0 {
		l.LivenessTimeout = DefaultLivenessTimeout
	}
	if l.MaxHandshakes <= 0 {
		l.MaxHandshakes = DefaultMaxHandshakes
	}
	l.RetryThreshold = max(l.RetryThreshold, DefaultRetryThreshold)
	return l
}

// maxIncomingUniStreams: HTTP/3's control and QPACK streams only.
const maxIncomingUniStreams = 16

// StalledStreams is how many streams of one peer connection may stall
// (the app behind them stops reading) after their windows grew to
// StreamReceiveWindow, while every other stream the peer may open,
// unidirectional ones included, is stalled too, holding its
// InitialStreamReceiveWindow, and new streams on that connection still
// flow. quic-go returns connection credit only for data read, and sends
// the peer more (MAX_DATA) only once a quarter of ConnectionReceiveWindow
// was read since it last did; it never shrinks a stream's window. So the
// other streams keep flowing while the stalled ones hold less than three
// quarters of the connection window: every MAX_DATA then leaves at least
// a quarter of it to them. Hold that much or more, and once the others
// used up what is left nothing is read that could trigger a MAX_DATA:
// every stream of the connection stops (docs/design.md, "QUIC limits and
// why"). Zero when the streams that stall before they grew could already
// hold the three quarters.
func (l Limits) StalledStreams() int64 {
	l = l.withDefaults()
	if l.MaxIncomingStreams <= 1 {
		return 0
	}
	// Strictly less than three quarters.
	budget := l.ConnectionReceiveWindow - l.ConnectionReceiveWindow/4 - 1
	others := uint64(l.MaxIncomingStreams-1) + maxIncomingUniStreams // all but the new stream
	small := others * l.InitialStreamReceiveWindow
	if small > budget {
		return 0
	}
	if l.StreamReceiveWindow == l.InitialStreamReceiveWindow {
		return l.MaxIncomingStreams - 1
	}
	grown := (budget - small) / (l.StreamReceiveWindow - l.InitialStreamReceiveWindow)
	return int64(min(grown, uint64(l.MaxIncomingStreams-1)))
}

func (l Limits) quicConfig() *quic.Config {
	// The connection window is the whole budget from the start: a window
	// that must first be auto-tuned upwards (which needs reads) could be
	// used up by a couple of stalled streams before it ever grew.
	return &quic.Config{
		HandshakeIdleTimeout:           l.DialTimeout,
		MaxIdleTimeout:                 l.IdleTimeout,
		KeepAlivePeriod:                l.KeepAlive,
		MaxIncomingStreams:             l.MaxIncomingStreams,
		MaxIncomingUniStreams:          maxIncomingUniStreams,
		InitialStreamReceiveWindow:     l.InitialStreamReceiveWindow,
		MaxStreamReceiveWindow:         l.StreamReceiveWindow,
		InitialConnectionReceiveWindow: l.ConnectionReceiveWindow,
		MaxConnectionReceiveWindow:     l.ConnectionReceiveWindow,
		// The liveness watch's PINGs are empty DATAGRAM frames. Nobody
		// reads them on the receiving side: quic-go keeps at most 128
		// (a few KiB) per connection and drops the rest, and the packet
		// is acknowledged either way, which is all the watch wants.
		EnableDatagrams: true,
	}
}

// Observer receives the handshake events of an Endpoint. The sidecar
// turns them into metrics; the transport does not know about metrics.
type Observer interface {
	// HandshakeStarted: an inbound handshake is in progress until end
	// is called.
	HandshakeStarted() (end func())
	// HandshakeRetried: an inbound client was asked to prove its
	// address with a QUIC Retry.
	HandshakeRetried()
	// HandshakeFailed: an inbound handshake (dial false) or one of our
	// dials (dial true) failed, for reason (HandshakeReason).
	HandshakeFailed(dial bool, reason string)
}

type noObserver struct{}

func (noObserver) HandshakeStarted() func()     { return func() {} }
func (noObserver) HandshakeRetried()            {}
func (noObserver) HandshakeFailed(bool, string) {}

// Config configures an Endpoint.
type Config struct {
	// Identity supplies our certificate and the trust roots. Required.
	Identity identity.Provider
	// Authorize decides which verified peers may connect to us; nil
	// accepts any peer of our own trust domain.
	Authorize identity.Authorizer
	Limits    Limits
	Logger    *slog.Logger
	// Observer is told about handshakes (for metrics); nil tells no one.
	Observer Observer
	// Now is the clock for dial back-off and for rate-limiting refusal
	// and dial-failure logs; nil is time.Now. Tests inject a fake one.
	Now func() time.Time
	// QlogDir, if set, receives one qlog trace file per QUIC connection.
	QlogDir string
	// PacketConn, if set, is used instead of binding the address given to
	// Listen or NewDialer: for sockets made elsewhere (another network
	// namespace, socket activation). The Endpoint takes ownership.
	PacketConn *net.UDPConn
	// AcceptH3: the listener also negotiates ALPN "h3", for plain HTTP/3
	// clients that present a mesh certificate (h3edge.go). Off by
	// default: a port that speaks only the mesh ALPN refuses them.
	AcceptH3 bool
}

// Endpoint owns the UDP socket that all QUIC traffic of a sidecar uses.
type Endpoint struct {
	cfg       Config
	limits    Limits
	udp       *net.UDPConn
	tr        *quic.Transport
	ln        *quic.Listener
	quicConf  *quic.Config
	logger    *slog.Logger
	listening bool
	gate      *handshakeGate
	// probe: port-unreachable probes (unreachable.go) reach the peers
	// this endpoint's socket reaches.
	probe bool
	// stopAccept ends when StopListening is called; refusing tracks the
	// goroutine that then refuses handshakes completing after it.
	stopAccept context.Context
	stop       context.CancelFunc
	stopOnce   sync.Once
	refusing   sync.WaitGroup
}

// Listen binds addr (UDP) and starts accepting mesh connections on it.
func Listen(addr string, cfg Config) (*Endpoint, error) {
	e, err := newEndpoint(addr, cfg)
	if err != nil {
		return nil, err
	}
	authz := cfg.Authorize
	if authz == nil {
		id, err := identity.LocalID(cfg.Identity)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("transport: listening without a local identity: %w", err)
		}
		authz = identity.AuthorizeTrustDomain(id.TrustDomain)
	}
	gate := newHandshakeGate(e.limits, e.cfg.Observer, e.logger, e.cfg.Now)
	e.tr.VerifySourceAddress = gate.verifySourceAddress
	e.tr.ConnContext = gate.connContext
	tlsConf := gate.serverTLSConfig(identity.ServerConfig(cfg.Identity, authz, listenProtos(cfg.AcceptH3)))
	ln, err := e.tr.Listen(tlsConf, e.quicConf)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("transport: listening on %s: %w", addr, err)
	}
	e.ln = ln
	e.gate = gate
	e.listening = true
	e.stopAccept, e.stop = context.WithCancel(context.Background())
	return e, nil
}

// NewDialer binds addr (UDP; "127.0.0.1:0" for an ephemeral port) for
// outbound connections only.
func NewDialer(addr string, cfg Config) (*Endpoint, error) { return newEndpoint(addr, cfg) }

func newEndpoint(addr string, cfg Config) (*Endpoint, error) {
	if cfg.Identity == nil {
		return nil, errors.New("transport: no identity provider: refusing to run without mTLS")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	udp := cfg.PacketConn
	if udp == nil {
		udpAddr, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return nil, fmt.Errorf("transport: resolving %q: %w", addr, err)
		}
		if udp, err = net.ListenUDP("udp", udpAddr); err != nil {
			return nil, fmt.Errorf("transport: binding UDP %s: %w", addr, err)
		}
	}
	raiseBuffers(udp)
	tr := &quic.Transport{Conn: udp, StatelessResetKey: statelessResetKey(cfg.Identity), ConnectionIDGenerator: newConnIDs()}
	limits := cfg.Limits.withDefaults()
	qc := limits.quicConfig()
	if cfg.QlogDir != "" {
		if err := os.MkdirAll(cfg.QlogDir, 0o755); err != nil {
			udp.Close()
			return nil, fmt.Errorf("transport: qlog directory: %w", err)
		}
		qc.Tracer = qlogTracer(cfg.QlogDir, cfg.Logger.Warn)
	}
	return &Endpoint{
		cfg:      cfg,
		limits:   limits,
		udp:      udp,
		tr:       tr,
		quicConf: qc,
		logger:   cfg.Logger,
		probe:    probeSocketsReachPeers(udp, cfg.PacketConn == nil),
	}, nil
}

// Addr is the bound UDP address.
func (e *Endpoint) Addr() *net.UDPAddr { return e.udp.LocalAddr().(*net.UDPAddr) }

// Accept returns the next inbound connection. Its peer has completed the
// mTLS handshake and passed the Authorizer. Most callers want
// Server.Accept, which also serves the connection's streams.
func (e *Endpoint) Accept(ctx context.Context) (*quic.Conn, error) {
	if e.ln == nil {
		return nil, errors.New("transport: endpoint is not listening")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(e.stopAccept, cancel)()
	conn, err := e.ln.Accept(ctx)
	if err != nil {
		if e.stopped() {
			return nil, quic.ErrServerClosed
		}
		return nil, err
	}
	if e.stopped() {
		// Taken from the queue as the drain began: refuse it like the
		// others (StopListening).
		conn.CloseWithError(ConnCodeShutdown, "draining")
		return nil, quic.ErrServerClosed
	}
	e.gate.accepted(conn)
	return conn, nil
}

func (e *Endpoint) stopped() bool { return e.stopAccept.Err() != nil }

// Dial opens a new connection to the peer at addr (a peer address as
// discovery.Endpoint.DialAddr makes it) that must present identity want.
// Most callers want Pool.Get, which shares connections.
func (e *Endpoint) Dial(ctx context.Context, addr string, want identity.ID) (*quic.Conn, error) {
	// A peer behind a gateway is "server-name@gateway-address": packets
	// go to the gateway, which routes the connection by the SNI of our
	// Initial and relays it to the peer without terminating TLS
	// (docs/design.md, "Gateway: bridging clusters").
	hostPort, serverName := discovery.SplitDialAddr(addr)
	udpAddr, err := net.ResolveUDPAddr("udp", hostPort)
	if err != nil {
		return nil, fmt.Errorf("transport: resolving peer %q: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, e.limits.HandshakeTimeout)
	defer cancel()
	tlsConf := identity.ClientConfig(e.cfg.Identity, want, []string{ALPN})
	if serverName != "" {
		tlsConf.ServerName = serverName
	}
	var presented atomic.Pointer[string] // who the server claimed to be, if we refused it
	verify := tlsConf.VerifyConnection
	tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			id := identity.PresentedID(cs.PeerCertificates)
			presented.Store(&id)
		}
		return err
	}
	if e.probe && serverName == "" {
		// A peer whose process is gone never answers our Initial: the
		// dial would wait for the dial timeout. Its host says so at
		// once, to a probe that can hear it.
		var unreachable context.CancelCauseFunc
		ctx, unreachable = context.WithCancelCause(ctx)
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			if probeUnreachable(ctx, udpAddr, e.limits.DialTimeout) {
				unreachable(errPortUnreachable)
			}
		}()
		defer func() { unreachable(nil); <-probed }()
	}
	conn, err := e.tr.Dial(ctx, udpAddr, tlsConf, e.quicConf)
	if err != nil {
		reason := HandshakeReason(err)
		if cause := context.Cause(ctx); errors.Is(cause, errPortUnreachable) {
			reason = ReasonUnreachable
			if !errors.Is(err, errPortUnreachable) {
				err = fmt.Errorf("%w (%w)", cause, err)
			}
		}
		de := &DialError{Addr: addr, Want: want, Reason: reason, Err: err}
		if id := presented.Load(); id != nil {
			de.Presented = *id
		}
		return nil, de
	}
	return conn, nil
}

// A DialError is a failed dial to a peer: the handshake failed, was
// refused by either side, timed out, or the peer closed the connection
// instead of accepting it.
type DialError struct {
	Addr string
	Want identity.ID
	// Reason is HandshakeReason of the failure.
	Reason string
	// Presented is the (unverified) identity the server presented when we
	// refused its certificate.
	Presented string
	Err       error
}

func (e *DialError) Error() string {
	msg := fmt.Sprintf("transport: dialing %s (%s) failed (%s)", e.Addr, e.Want, e.Reason)
	var te *quic.TransportError
	switch {
	case e.Presented != "":
		msg += ": we refused the server's certificate, which claims " + e.Presented
	case errors.As(e.Err, &te) && te.Remote && te.ErrorCode.IsCryptoError():
		msg += ": the server refused our certificate"
	}
	return msg + ": " + e.Err.Error()
}

func (e *DialError) Unwrap() error { return e.Err }

// FailureReason is Reason: the bounded label failed dials are logged and
// counted with, found by callers that know no transport.
func (e *DialError) FailureReason() string { return e.Reason }

// StopListening refuses new inbound connections; established ones and
// outbound dials are unaffected. Used when draining. A refused peer is
// told so at once (CONNECTION_REFUSED to its first Initial; a connection
// whose handshake was already under way is closed with ConnCodeShutdown
// once it completes), so it tries another endpoint within a round trip
// instead of waiting for its connect timeout, as it would if the
// listener simply closed (quic-go then drops Initials without an
// answer). Accept returns an error wrapping net.ErrClosed from now on.
func (e *Endpoint) StopListening() error {
	if e.ln == nil {
		return nil
	}
	e.stopOnce.Do(func() {
		e.gate.draining.Store(true)
		e.stop()
		e.refusing.Go(e.refuseAccepted)
	})
	return nil
}

// refuseAccepted closes the connections whose handshakes were in flight
// when the drain began, as they complete, until the endpoint closes.
func (e *Endpoint) refuseAccepted() {
	for {
		conn, err := e.ln.Accept(context.Background())
		if err != nil {
			return
		}
		e.gate.accepted(conn)
		conn.CloseWithError(ConnCodeShutdown, "draining")
	}
}

// Limits returns the effective limits.
func (e *Endpoint) Limits() Limits { return e.limits }

// Close stops listening, closes every connection on the socket and the
// socket itself.
func (e *Endpoint) Close() error {
	if e.ln != nil {
		e.ln.Close()
	}
	err := e.tr.Close()
	e.udp.Close()
	if e.stop != nil {
		e.stop()
	}
	e.refusing.Wait()
	return err
}

// statelessResetKey derives the key for QUIC stateless resets from the
// workload's private key, so a sidecar that restarts with the same
// identity can tell peers still holding connections to its previous
// incarnation that those are gone: they fail within a round trip instead
// of after the idle timeout. The key is a one-way hash of the private key;
// without a usable key no resets are sent (quic-go's default).
func statelessResetKey(p identity.Provider) *quic.StatelessResetKey {
	cert, err := p.Certificate()
	if err != nil || cert.PrivateKey == nil {
		return nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil
	}
	h := sha256.New()
	h.Write([]byte("quicmesh stateless reset key v1\x00"))
	h.Write(der)
	var key quic.StatelessResetKey
	copy(key[:], h.Sum(nil))
	return &key
}

// peerID returns the verified identity of a connection's peer.
func peerID(conn *quic.Conn) (identity.ID, error) {
	return identity.PeerID(conn.ConnectionState().TLS)
}
