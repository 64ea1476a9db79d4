// Package control is the control plane's gRPC side: the Identity service
// (Certify) and the Discovery service (Watch, WatchIndex), independent of
// Kubernetes. It asks a TokenReviewer who a token belongs to and a Source
// where services' endpoints are; internal/control/kube implements both on
// client-go.
package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// ErrTokenRejected is wrapped by a TokenReviewer's error when the token is
// not valid for us (forged, expired, wrong audience, not a service
// account's); any other error means the review itself failed.
var ErrTokenRejected = errors.New("control: token rejected")

// ServiceAccount is who a token was issued to.
type ServiceAccount struct {
	Namespace string
	Name      string
}

// TokenReviewer authenticates a ServiceAccount token.
type TokenReviewer interface {
	Review(ctx context.Context, token string) (ServiceAccount, error)
}

// maxCSRSize bounds what Certify parses; a P-256 CSR is about 250 bytes.
const maxCSRSize = 16 << 10

// IdentityServer implements the Identity service: it certifies a key for
// the SPIFFE ID of the service account whose token comes with it.
type IdentityServer struct {
	controlpb.UnimplementedIdentityServer

	reviewer TokenReviewer
	ca       *identity.CA
	lifetime time.Duration
	logger   *slog.Logger
}

// NewIdentityServer returns an Identity service that issues certificates
// from ca for lifetime (0: identity.DefaultCertLifetime) to holders of
// tokens reviewer accepts.
func NewIdentityServer(reviewer TokenReviewer, ca *identity.CA, lifetime time.Duration, logger *slog.Logger) *IdentityServer {
	if lifetime == 0 {
		lifetime = identity.DefaultCertLifetime
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &IdentityServer{reviewer: reviewer, ca: ca, lifetime: lifetime, logger: logger}
}

// Certify checks the CSR's signature (the caller holds the key), reviews
// the token, and issues a leaf for spiffe://TD/ns/NS/sa/SA of the token's
// service account. The CSR's subject and extensions are ignored: only its
// key is certified.
func (s *IdentityServer) Certify(ctx context.Context, req *controlpb.CertifyRequest) (*controlpb.CertifyResponse, error) {
	if req.GetToken() == "" {
		return nil, status.Error(codes.Unauthenticated, "certify: no service account token")
	}
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "certify: %v", err)
	}
	sa, err := s.reviewer.Review(ctx, req.GetToken())
	if err != nil {
		if errors.Is(err, ErrTokenRejected) {
			s.logger.Info("certify: token rejected", "error", err)
			return nil, status.Errorf(codes.Unauthenticated, "certify: %v", err)
		}
		s.logger.Warn("certify: token review failed", "error", err)
		return nil, status.Errorf(codes.Unavailable, "certify: reviewing the token: %v", err)
	}
	id, err := identity.ParseID(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", s.ca.TrustDomain(), sa.Namespace, sa.Name))
	if err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "certify: service account %s/%s makes no valid SPIFFE ID: %v", sa.Namespace, sa.Name, err)
	}
	leaf, err := s.ca.Certify(id, csr.PublicKey, s.lifetime)
	if err != nil {
		s.logger.Error("certify: issuing failed", "id", id.String(), "error", err)
		return nil, status.Errorf(codes.Internal, "certify: issuing %s: %v", id, err)
	}
	s.logger.Info("certify: issued", "id", id.String(), "not_after", leaf.NotAfter)
	// With an intermediate CA the chain carries it after the leaf, and
	// the bundle is the root alone: peers anchor trust in what the
	// operator keeps offline.
	chain := [][]byte{leaf.Raw}
	for _, c := range s.ca.Chain() {
		chain = append(chain, c.Raw)
	}
	var bundle [][]byte
	for _, c := range s.ca.Roots() {
		bundle = append(bundle, c.Raw)
	}
	return &controlpb.CertifyResponse{
		Chain:       chain,
		TrustBundle: bundle,
		Lifetime:    durationpb.New(leaf.NotAfter.Sub(leaf.NotBefore)),
	}, nil
}

// parseCSR parses a DER certificate request, checks that it is signed by
// the key it carries, and that the key is one a workload certificate may
// hold.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("no certificate request")
	}
	if len(der) > maxCSRSize {
		return nil, fmt.Errorf("certificate request is %d bytes, more than %d", len(der), maxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the certificate request's signature does not verify with its key: %w", err)
	}
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, errors.New("ECDSA keys must be P-256 or P-384")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if pub.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits, want at least 2048", pub.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("unsupported key type %T", csr.PublicKey)
	}
	return csr, nil
}
