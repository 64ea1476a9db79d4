package control

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// Config assembles the control plane's gRPC server.
type Config struct {
	// CA issues workload certificates and the server's own.
	CA *identity.CA
	// ID is the control plane's own SPIFFE ID, which sidecars require of
	// it (e.g. spiffe://TD/ns/quicmesh/sa/quicmesh-control).
	ID identity.ID
	// Lifetime of workload certificates; 0 means
	// identity.DefaultCertLifetime.
	Lifetime time.Duration
	Reviewer TokenReviewer
	Source   Source
	Logger   *slog.Logger
}

// Server is the control plane's gRPC server with both services.
type Server struct {
	*grpc.Server
	own *identity.CAProvider
}

// NewServer returns a gRPC server serving Identity and Discovery over
// TLS 1.3 with a certificate for cfg.ID that it renews itself. A client
// certificate is optional at the handshake, since a workload asking for
// its first certificate has none, and required by Discovery (MeshPeer).
func NewServer(cfg Config) (*Server, error) {
	if cfg.CA == nil || cfg.Reviewer == nil || cfg.Source == nil {
		return nil, errors.New("control: NewServer needs a CA, a TokenReviewer and a Source")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	own, err := identity.NewCAProvider(cfg.CA, cfg.ID, identity.CAProviderOptions{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	tlsConfig := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return own.Certificate() },
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      cfg.CA.Pool(),
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		// Streams are long-lived and idle between changes: keepalives
		// find dead sidecars, and allow theirs.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	controlpb.RegisterIdentityServer(srv, NewIdentityServer(cfg.Reviewer, cfg.CA, cfg.Lifetime, cfg.Logger))
	controlpb.RegisterDiscoveryServer(srv, NewDiscoveryServer(cfg.Source, MeshPeer(cfg.CA.TrustDomain()), cfg.Logger))
	return &Server{Server: srv, own: own}, nil
}

// Stop stops serving at once and stops renewing the server's certificate.
func (s *Server) Stop() {
	s.Server.Stop()
	s.own.Close()
}

// MeshPeer admits callers that presented a client certificate that
// verified against the CA (the TLS handshake checked the chain) and
// carries a SPIFFE ID of trust domain td: certified sidecars.
func MeshPeer(td string) Authorizer {
	return func(ctx context.Context) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return status.Error(codes.Unauthenticated, "no peer")
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(info.State.VerifiedChains) == 0 {
			return status.Error(codes.Unauthenticated, "discovery needs a client certificate of the mesh: certify first")
		}
		id, err := identity.IDFromCert(info.State.VerifiedChains[0][0])
		if err != nil {
			return status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
		}
		if id.TrustDomain != td {
			return status.Errorf(codes.PermissionDenied, "%s is not of trust domain %s", id, td)
		}
		return nil
	}
}
