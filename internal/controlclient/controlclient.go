// Package controlclient dials the control plane from a sidecar: gRPC over
// TLS 1.3 where the server must present the control plane's SPIFFE ID
// under the operator's trust anchors, and the client presents its workload
// certificate once it has one (Discovery requires it; Certify, which
// obtains it, does not). A client certificate is presented at the TLS
// handshake only, so a sidecar uses two connections: one without, for
// Certify, and one for Discovery, made after it is certified.
package controlclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/quicmesh/quicmesh/identity"
)

// Dial returns a connection to the control plane at addr (host:port). The
// server's chain must verify against anchors for server authentication
// and carry exactly the SPIFFE ID server. cert, called at each handshake,
// returns the client certificate to present, or an error to present none.
// The connection is made lazily and re-made after failures by gRPC.
func Dial(addr string, anchors *x509.CertPool, server identity.ID, cert func() (*tls.Certificate, error)) (*grpc.ClientConn, error) {
	if anchors == nil || server.IsZero() {
		return nil, errors.New("controlclient: trust anchors and the control plane's ID are required")
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: server.TrustDomain,
		// The server is authenticated by SPIFFE ID, not host name:
		// VerifyConnection does the whole check.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs.PeerCertificates, anchors, server)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			c, err := cert()
			if err != nil {
				return &tls.Certificate{}, nil // none yet: Certify does not need one
			}
			return c, nil
		},
	}
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	)
}

func verifyServer(certs []*x509.Certificate, anchors *x509.CertPool, want identity.ID) error {
	if len(certs) == 0 {
		return errors.New("controlclient: the control plane sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: anchors, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("controlclient: the control plane's certificate: %w", err)
	}
	id, err := identity.IDFromCert(certs[0])
	if err != nil {
		return fmt.Errorf("controlclient: the control plane's certificate: %w", err)
	}
	if id != want {
		return fmt.Errorf("controlclient: the control plane is %s, want %s", id, want)
	}
	return nil
}
