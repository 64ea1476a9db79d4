package inbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quicmesh/quicmesh/internal/origdst"
	"github.com/quicmesh/quicmesh/internal/splice"
	"github.com/quicmesh/quicmesh/internal/telemetry"
	"github.com/quicmesh/quicmesh/transport/meshcode"
)

// The plain inbound listener: quicmesh init redirects TCP that arrives at
// the pod from outside the mesh (mesh traffic is QUIC, on UDP) to it. A
// plain caller has no identity: nothing vouches for it, and its requests
// carry no Quicmesh-Peer-Identity.
//
// Under PlainPermissive it is delivered to where it was going, the pod's
// IP at the port dialled, exactly as without a sidecar (the sidecar's own
// connection is not redirected again: init excludes its UID). Under
// PlainStrict it is refused: only mesh traffic reaches the apps. Either
// way it is counted (quicmesh_inbound_connections_total{source="plain"}),
// next to the mesh's.

// PlainPolicy says what happens to plain TCP from outside the mesh.
type PlainPolicy string

const (
	PlainPermissive PlainPolicy = "permissive" // delivered (default)
	PlainStrict     PlainPolicy = "strict"     // refused
)

// ParsePlainPolicy reads a policy name; "" is PlainPermissive.
func ParsePlainPolicy(s string) (PlainPolicy, error) {
	switch PlainPolicy(s) {
	case "", PlainPermissive:
		return PlainPermissive, nil
	case PlainStrict:
		return PlainStrict, nil
	}
	return "", fmt.Errorf("plain TCP policy %q: want permissive or strict", s)
}

// PlainConfig configures a PlainServer.
type PlainConfig struct {
	Policy PlainPolicy
	// ConnectTimeout bounds connecting to the app; default 2s.
	ConnectTimeout time.Duration
	// Original recovers a connection's original destination; nil is
	// origdst.Destination.
	Original func(net.Conn) (netip.AddrPort, error)
	// Dial connects to the app; nil is a net.Dialer.
	Dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger  *slog.Logger
	Metrics *telemetry.Metrics
}

// PlainServer serves a plain inbound listener.
type PlainServer struct {
	cfg PlainConfig
	log *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewPlain returns a plain inbound server; Serve runs it on a listener.
func NewPlain(cfg PlainConfig) (*PlainServer, error) {
	if _, err := ParsePlainPolicy(string(cfg.Policy)); err != nil {
		return nil, fmt.Errorf("inbound: %w", err)
	}
	if cfg.Policy == "" {
		cfg.Policy = PlainPermissive
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 2 * time.Second
	}
	if cfg.Original == nil {
		cfg.Original = func(c net.Conn) (netip.AddrPort, error) {
			tc, ok := c.(*net.TCPConn)
			if !ok {
				return netip.AddrPort{}, fmt.Errorf("inbound: %T is not a TCP connection", c)
			}
			return origdst.Destination(tc)
		}
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout}
		cfg.Dial = d.DialContext
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &PlainServer{cfg: cfg, log: cfg.Logger, conns: map[net.Conn]struct{}{}}, nil
}

// Serve accepts plain connections on ln until it is closed (it then
// returns nil).
func (s *PlainServer) Serve(ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("inbound: accepting plain TCP on %s: %w", ln.Addr(), err)
		}
		if !s.track(conn) {
			splice.Reset(conn)
			continue
		}
		go func() {
			defer s.untrack(conn)
			s.serve(conn)
		}()
	}
}

func (s *PlainServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *PlainServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *PlainServer) serve(conn net.Conn) {
	client := conn.RemoteAddr().String()
	dst, err := s.cfg.Original(conn)
	if err != nil {
		s.cfg.Metrics.InboundConn(telemetry.SourcePlain, telemetry.ResultRefused)
		s.log.Warn("plain inbound: refusing a connection without an original destination", "client", client, "error", err)
		splice.Reset(conn)
		return
	}
	if s.cfg.Policy == PlainStrict {
		s.cfg.Metrics.InboundConn(telemetry.SourcePlain, telemetry.ResultRefused)
		s.log.Info("plain inbound: refused plain TCP (policy strict: mesh traffic only)", "client", client, "dst", dst.String())
		splice.Reset(conn)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ConnectTimeout)
	app, err := s.cfg.Dial(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		s.cfg.Metrics.InboundConn(telemetry.SourcePlain, telemetry.ResultRefused)
		s.log.Debug("plain inbound: connecting to the app failed", "client", client, "dst", dst.String(), "error", err)
		splice.Reset(conn)
		return
	}
	s.cfg.Metrics.InboundConn(telemetry.SourcePlain, telemetry.ResultDelivered)
	defer app.Close()
	res := splice.Run(conn, connStream{app})
	s.log.Debug("plain inbound: closed", "client", client, "dst", dst.String(), "to_app", res.Sent, "from_app", res.Received, "error", res.Err)
}

// connStream is an app connection as the far side of a splice.
type connStream struct{ net.Conn }

func (c connStream) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c connStream) Reset(meshcode.Code) { splice.Reset(c.Conn) }

// Close resets every open plain connection and waits for them. Closing
// the listener is the caller's job.
func (s *PlainServer) Close() error {
	s.mu.Lock()
	s.closed = true
	open := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		splice.Reset(c)
	}
	s.wg.Wait()
	return nil
}
