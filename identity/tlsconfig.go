package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ServerConfig returns a TLS 1.3-only server config for mesh listeners.
//
//   - The certificate comes from p.Certificate() on every handshake, so
//     rotation needs no restart. If p has no identity the handshake fails
//     (fail closed) with a *VerifyError of ReasonNoIdentity.
//   - A client certificate is required and verified in VerifyConnection,
//     which also runs for resumed sessions: the leaf must carry exactly one
//     SPIFFE ID, the chain must verify at the current time for client
//     authentication against p.Bundle of that ID's trust domain (a CA of
//     one trust domain never vouches for another's identities), and authz
//     must accept the ID.
//     crypto/tls is asked only to request one (tls.RequestClientCert; it
//     still checks the CertificateVerify signature of any certificate
//     sent), so that a client sending none reaches VerifyConnection too and
//     is refused there, where it can be counted and logged, with
//     ReasonNoCertificate. The handshake fails closed either way.
//   - A nil authz accepts any ID in the local trust domain, that of
//     p's current certificate. It does not mean "accept everything".
//
// Refusals are *VerifyError values (so errors.Is(err, ErrUnauthorized)
// holds) returned from the server's handshake.
//
// A QUIC listener does not return failed handshakes from Accept. To count
// server-side refusals, wrap the callback:
//
//	cfg := identity.ServerConfig(p, authz, protos)
//	verify := cfg.VerifyConnection
//	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
//		err := verify(cs)
//		if err != nil {
//			refusals.WithLabelValues(identity.ReasonOf(err)).Inc()
//		}
//		return err
//	}
func ServerConfig(p Provider, authz Authorizer, nextProtos []string) *tls.Config {
	if authz == nil {
		authz = AuthorizeLocalTrustDomain(p)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: slices.Clone(nextProtos),
		// Not weaker than RequireAnyClientCert: VerifyConnection refuses a
		// handshake without a certificate (verifyPeer, ReasonNoCertificate).
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return localCertificate(p)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(p, cs.PeerCertificates, x509.ExtKeyUsageClientAuth, authz)
			return err
		},
	}
}

// ClientConfig returns a TLS 1.3-only client config for dialing a mesh
// peer that must present identity expect.
//
// The server is authenticated by SPIFFE ID, not host name: the standard
// host name verification is disabled (InsecureSkipVerify) and replaced by
// VerifyConnection, which verifies the chain against p.Bundle of the peer's
// trust domain at the current time for server authentication (a server of
// a federated trust domain needs its bundle) and requires the peer's ID to
// equal expect (ReasonWrongID otherwise), with the same leaf and trust
// domain checks as ServerConfig. A zero expect refuses every server.
// ServerName (sent as SNI only) is expect's trust domain. No session cache
// is set; if a caller adds one, resumed sessions are re-verified too.
//
// The client certificate comes from p.Certificate() at handshake time; if
// p has no identity the handshake fails with ReasonNoIdentity.
func ClientConfig(p Provider, expect ID, nextProtos []string) *tls.Config {
	serverName := expect.TrustDomain
	if serverName == "" {
		serverName = "quicmesh.invalid"
	}
	authz := AuthorizeID(expect)
	if expect.IsZero() {
		authz = func(peer ID) error {
			return &VerifyError{Reason: ReasonWrongID, Err: fmt.Errorf("peer is %s but no expected server ID was configured", peer)}
		}
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: slices.Clone(nextProtos),
		ServerName: serverName,
		// Not insecure: VerifyConnection below verifies the chain and the
		// SPIFFE ID. Only the host name check is skipped.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return localCertificate(p)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := verifyPeer(p, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, authz)
			return err
		},
	}
}

// PeerID returns the SPIFFE ID of the peer of a completed handshake, from
// PeerCertificates[0]. It is "verified" only for connections made with
// ServerConfig or ClientConfig, whose callbacks refuse unverified peers.
func PeerID(cs tls.ConnectionState) (ID, error) {
	if !cs.HandshakeComplete {
		return ID{}, errors.New("identity: TLS handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 {
		return ID{}, &VerifyError{Reason: ReasonNoCertificate, Err: errors.New("peer presented no certificate")}
	}
	id, err := idOfCert(cs.PeerCertificates[0])
	if err != nil {
		return ID{}, &VerifyError{Reason: ReasonBadID, Err: err}
	}
	return id, nil
}

// PresentedID returns, for logs, the SPIFFE ID a peer's leaf certificate
// claims, WITHOUT verifying anything: "" when there is no leaf or it names
// no single valid SPIFFE ID. Use it only to say who a refused peer claimed
// to be; PeerID is the verified identity of an accepted one.
func PresentedID(certs []*x509.Certificate) string {
	if len(certs) == 0 {
		return ""
	}
	id, err := idOfCert(certs[0])
	if err != nil {
		return ""
	}
	return id.String()
}

// ReasonOf classifies a handshake error for metrics: the Reason of a
// *VerifyError in its chain, ReasonNoIdentity for ErrNoIdentity,
// ReasonNoCertificate for crypto/tls's own "client didn't provide a
// certificate", ReasonOther for any other error, and "" for nil. The
// result is always one of the Reason constants, so it is safe as a metrics
// label.
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	if ve, ok := errors.AsType[*VerifyError](err); ok {
		if isReason(ve.Reason) {
			return ve.Reason
		}
		return ReasonOther
	}
	if errors.Is(err, ErrNoIdentity) {
		return ReasonNoIdentity
	}
	msg := err.Error()
	// A layer that flattened our error to text (a QUIC CONNECTION_CLOSE
	// reason, a log line) still carries "refused (<reason>)".
	if _, after, ok := strings.Cut(msg, " refused ("); ok {
		if reason, _, ok := strings.Cut(after, ")"); ok && isReason(reason) {
			return reason
		}
	}
	if strings.Contains(msg, "client didn't provide a certificate") {
		return ReasonNoCertificate
	}
	return ReasonOther
}

func isReason(s string) bool {
	switch s {
	case ReasonNoCertificate, ReasonUntrusted, ReasonExpired, ReasonBadID, ReasonWrongID, ReasonNoIdentity, ReasonOther:
		return true
	}
	return false
}

// localCertificate fetches our certificate for a handshake, failing
// closed.
func localCertificate(p Provider) (*tls.Certificate, error) {
	if p == nil {
		return nil, &VerifyError{Reason: ReasonNoIdentity, Err: fmt.Errorf("identity: nil provider: %w", ErrNoIdentity)}
	}
	cert, err := p.Certificate()
	if err == nil && (cert == nil || len(cert.Certificate) == 0) {
		err = fmt.Errorf("identity: provider returned an empty certificate: %w", ErrNoIdentity)
	}
	if err != nil {
		return nil, &VerifyError{Reason: ReasonNoIdentity, Err: err}
	}
	return cert, nil
}

// AuthorizeLocalTrustDomain accepts any peer in the trust domain of p's
// current certificate, looked up at each handshake (a Workload API
// provider learns it only with its first SVID), and any peer in the
// trust domains also lists. It is what ServerConfig uses for a nil
// Authorizer, with no others.
func AuthorizeLocalTrustDomain(p Provider, also ...string) Authorizer {
	also = slices.Clone(also)
	return func(peer ID) error {
		local, err := LocalID(p)
		if err != nil {
			return &VerifyError{Reason: ReasonNoIdentity, Err: err}
		}
		return AuthorizeTrustDomains(append([]string{local.TrustDomain}, also...)...)(peer)
	}
}

// verifyPeer verifies a peer's chain against the bundle of the trust
// domain its leaf claims, and only that bundle, and returns its SPIFFE ID
// after authz accepted it. Every error is a *VerifyError.
func verifyPeer(p Provider, certs []*x509.Certificate, usage x509.ExtKeyUsage, authz Authorizer) (ID, error) {
	if len(certs) == 0 {
		return ID{}, &VerifyError{Reason: ReasonNoCertificate, Err: errors.New("peer presented no certificate")}
	}
	if p == nil {
		return ID{}, &VerifyError{Reason: ReasonNoIdentity, Err: fmt.Errorf("identity: nil provider: %w", ErrNoIdentity)}
	}
	leaf := certs[0]
	// The claimed ID only selects the bundle; nothing is trusted before
	// the chain verifies against it.
	id, err := idOfCert(leaf)
	if err != nil {
		return ID{}, &VerifyError{Reason: ReasonBadID, Err: err}
	}
	roots, err := p.Bundle(id.TrustDomain)
	if err == nil && roots == nil {
		// A nil pool would make x509 fall back to the system roots.
		err = fmt.Errorf("identity: provider returned a nil trust bundle for %q: %w", id.TrustDomain, ErrNoIdentity)
	}
	switch {
	case errors.Is(err, ErrNoIdentity):
		return ID{}, &VerifyError{Reason: ReasonNoIdentity, Err: err}
	case err != nil:
		return ID{}, &VerifyError{Reason: ReasonUntrusted, Err: fmt.Errorf("peer %s: %w", id, err)}
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return ID{}, &VerifyError{Reason: classifyChainError(leaf, opts, err), Err: err}
	}
	if leaf.IsCA {
		return ID{}, &VerifyError{Reason: ReasonBadID, Err: errors.New("peer's leaf is a CA certificate, not a workload certificate")}
	}
	if !chainsMatchTrustDomain(chains, id.TrustDomain) {
		return ID{}, &VerifyError{Reason: ReasonUntrusted, Err: fmt.Errorf("peer %s is signed by a CA of another trust domain", id)}
	}
	if authz == nil {
		return ID{}, &VerifyError{Reason: ReasonWrongID, Err: errors.New("no authorizer")}
	}
	if err := authz(id); err != nil {
		if _, ok := errors.AsType[*VerifyError](err); ok {
			return ID{}, err
		}
		return ID{}, &VerifyError{Reason: ReasonWrongID, Err: err}
	}
	return id, nil
}

// classifyChainError tells an expired (or not yet valid) chain from an
// untrusted one. x509 reports expiry before trust, so a stranger's expired
// certificate would look merely "expired"; we call it expired only if the
// chain verifies at an instant inside the leaf's validity.
func classifyChainError(leaf *x509.Certificate, opts x509.VerifyOptions, err error) string {
	inv, ok := errors.AsType[x509.CertificateInvalidError](err)
	if !ok || inv.Reason != x509.Expired {
		return ReasonUntrusted
	}
	if opts.CurrentTime.Before(leaf.NotBefore) {
		opts.CurrentTime = leaf.NotBefore
	} else {
		opts.CurrentTime = leaf.NotAfter
	}
	if _, err := leaf.Verify(opts); err != nil {
		if inv, ok := errors.AsType[x509.CertificateInvalidError](err); !ok || inv.Reason != x509.Expired {
			return ReasonUntrusted
		}
	}
	return ReasonExpired
}

// chainsMatchTrustDomain reports whether some verified chain binds the
// peer's trust domain: every CA certificate in it that names a SPIFFE
// trust domain (as our CA's root does) must name td. CAs without a SPIFFE
// URI SAN constrain nothing. This stops a CA of one trust domain that sits
// in a bundle (say a federated bundle file that wrongly holds another
// trust domain's CA too) from minting identities of another.
func chainsMatchTrustDomain(chains [][]*x509.Certificate, td string) bool {
	for _, chain := range chains {
		ok := true
		for _, ca := range chain[1:] {
			for _, u := range ca.URIs {
				if u.Scheme != "spiffe" {
					continue
				}
				id, err := ParseID(u.String())
				if err != nil || id.TrustDomain != td {
					ok = false
				}
			}
		}
		if ok {
			return true
		}
	}
	return false
}
