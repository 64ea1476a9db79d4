// Package controlplane is an identity.Provider whose certificate comes
// from the quicmesh control plane's Identity service: it generates a key
// once, proves who it is with the pod's projected ServiceAccount token,
// and renews at about 70 % of each certificate's lifetime.
//
// It fails closed: until the first certificate arrives, Certificate
// returns identity.ErrNoIdentity and no handshake completes; Ready is
// closed when it arrives. A failed renewal keeps the current certificate
// and retries with back-off, so connections never lose their identity
// while the control plane is briefly away.
package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/internal/controlpb"
)

// DefaultTokenFile is where the sidecar's projected ServiceAccount token
// volume is mounted (deploy/kubernetes).
const DefaultTokenFile = "/var/run/secrets/quicmesh/token"

// Certifier is the one call the provider needs of the control plane.
type Certifier interface {
	Certify(ctx context.Context, in *controlpb.CertifyRequest, opts ...grpc.CallOption) (*controlpb.CertifyResponse, error)
}

// Options configures a Provider.
type Options struct {
	// TokenFile holds the ServiceAccount token, re-read at each attempt
	// since the kubelet rotates it; "" means DefaultTokenFile.
	TokenFile string
	// RenewAt is the fraction of a certificate's lifetime after which it
	// is renewed; 0 means 0.7.
	RenewAt float64
	// MinBackoff and MaxBackoff bound the wait between failed attempts
	// (doubling, with jitter); 0 means 200 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one Certify call; 0 means 10 s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Provider is an identity.Provider fed by the control plane.
type Provider struct {
	client Certifier
	opts   Options
	logger *slog.Logger
	key    *ecdsa.PrivateKey
	csr    []byte
	sp     *identity.StaticProvider

	ready     chan struct{}
	readyOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

var _ identity.Provider = (*Provider)(nil)

// Start generates the workload key and starts certifying it in the
// background. Close stops it.
func Start(client Certifier, opts Options) (*Provider, error) {
	if client == nil {
		return nil, errors.New("controlplane: no Identity client")
	}
	if opts.TokenFile == "" {
		opts.TokenFile = DefaultTokenFile
	}
	if opts.RenewAt == 0 {
		opts.RenewAt = 0.7
	}
	if opts.RenewAt <= 0 || opts.RenewAt >= 1 {
		return nil, fmt.Errorf("controlplane: renewal at %v of the lifetime: want a fraction between 0 and 1", opts.RenewAt)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: generating the workload key: %w", err)
	}
	// The request names nothing: the control plane derives the identity
	// from the token alone.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("controlplane: certificate request: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Provider{
		client: client,
		opts:   opts,
		logger: opts.Logger,
		key:    key,
		csr:    csr,
		sp:     identity.NewStaticProvider(nil, nil),
		ready:  make(chan struct{}),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go p.run(ctx)
	return p, nil
}

func (p *Provider) run(ctx context.Context) {
	defer close(p.done)
	backoff := p.opts.MinBackoff
	wait := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		leaf, err := p.certify(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := backoff/2 + mrand.N(backoff/2+1)
			backoff = min(2*backoff, p.opts.MaxBackoff)
			if cur, _ := p.sp.Certificate(); cur != nil {
				p.logger.Warn("controlplane: renewing the certificate failed; keeping the current one", "error", err, "retry_in", d, "not_after", cur.Leaf.NotAfter)
				// Never wait past the current certificate's end.
				d = min(d, max(time.Until(cur.Leaf.NotAfter)/2, p.opts.MinBackoff))
			} else {
				p.logger.Warn("controlplane: no certificate yet; not ready", "error", err, "retry_in", d)
			}
			wait = d
			continue
		}
		backoff = p.opts.MinBackoff
		// From now, not from NotBefore, which the CA back-dates for
		// clock skew: a short lifetime would otherwise be renewed at once.
		wait = max(time.Duration(math.Round(float64(time.Until(leaf.NotAfter))*p.opts.RenewAt)), p.opts.MinBackoff)
		p.logger.Info("controlplane: certified", "id", leaf.URIs[0].String(), "not_after", leaf.NotAfter, "renew_in", wait.Round(time.Second))
	}
}

// certify makes one Certify call and installs its result.
func (p *Provider) certify(ctx context.Context) (*x509.Certificate, error) {
	token, err := os.ReadFile(p.opts.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("controlplane: reading the service account token: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	res, err := p.client.Certify(ctx, &controlpb.CertifyRequest{Csr: p.csr, Token: strings.TrimSpace(string(token))})
	if err != nil {
		return nil, fmt.Errorf("controlplane: certify: %w", err)
	}
	cert, roots, err := p.check(res)
	if err != nil {
		return nil, err
	}
	p.sp.Set(cert, roots)
	p.readyOnce.Do(func() { close(p.ready) })
	return cert.Leaf, nil
}

// check verifies what the control plane sent before it is used: a chain
// for our key, valid now, that verifies against the bundle that came
// with it.
func (p *Provider) check(res *controlpb.CertifyResponse) (*tls.Certificate, *x509.CertPool, error) {
	if len(res.GetChain()) == 0 || len(res.GetTrustBundle()) == 0 {
		return nil, nil, errors.New("controlplane: the response has no certificate or no trust bundle")
	}
	var chain []*x509.Certificate
	for _, der := range res.GetChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("controlplane: the certificate chain: %w", err)
		}
		chain = append(chain, c)
	}
	roots := x509.NewCertPool()
	for _, der := range res.GetTrustBundle() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("controlplane: the trust bundle: %w", err)
		}
		roots.AddCert(c)
	}
	leaf := chain[0]
	if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(p.key.Public()) {
		return nil, nil, errors.New("controlplane: the certificate is not for our key")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, nil, fmt.Errorf("controlplane: the certificate does not verify against the trust bundle: %w", err)
	}
	if _, err := identity.IDFromCert(leaf); err != nil {
		return nil, nil, fmt.Errorf("controlplane: %w", err)
	}
	if res.GetLifetime().AsDuration() <= 0 {
		return nil, nil, errors.New("controlplane: the response has no lifetime")
	}
	return &tls.Certificate{Certificate: res.GetChain(), PrivateKey: p.key, Leaf: leaf}, roots, nil
}

// Ready is closed when the first certificate has arrived.
func (p *Provider) Ready() <-chan struct{} { return p.ready }

// Certificate returns the current certificate, or an error wrapping
// identity.ErrNoIdentity before the first one.
func (p *Provider) Certificate() (*tls.Certificate, error) { return p.sp.Certificate() }

// Bundle returns the trust bundle the control plane sent for the local
// trust domain; no federated bundles.
func (p *Provider) Bundle(td string) (*x509.CertPool, error) { return p.sp.Bundle(td) }

// Changed is closed at the next certificate.
func (p *Provider) Changed() <-chan struct{} { return p.sp.Changed() }

// Close stops renewing; the last certificate is served until it expires.
func (p *Provider) Close() error {
	p.cancel()
	<-p.done
	return nil
}
