package meshtest

import (
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/quicmesh/quicmesh/identity"
	"github.com/quicmesh/quicmesh/transport"
)

// H3TLS is a plain HTTP/3 client's TLS config with a mesh identity: it
// presents p's certificate, and holds the server to want by SPIFFE ID as
// a sidecar does. serverName, if set, is sent as SNI (a gateway's route).
func H3TLS(p identity.Provider, want identity.ID, serverName string) *tls.Config {
	c := identity.ClientConfig(p, want, []string{transport.ALPNH3})
	if serverName != "" {
		c.ServerName = serverName
	}
	return c
}

// H3Client is a plain HTTP/3 client (quic-go's http3, not the mesh's
// transport) with tlsConf; its connections close when the test ends.
// Every request needs an https:// URL.
func H3Client(t testing.TB, tlsConf *tls.Config) *http.Client {
	tr := &http3.Transport{TLSClientConfig: tlsConf, QUICConfig: &quic.Config{}}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr}
}
