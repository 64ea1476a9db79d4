package transport

import (
	"crypto/rand"
	"fmt"

	"github.com/quic-go/quic-go"
)

// Connection IDs a sidecar issues start with a prefix fixed for its
// socket, so a gateway relaying its connections can route the client's
// packets by it (docs/design.md, "Gateway: bridging clusters"). A client
// moves to another of the IDs the sidecar issued whenever it likes
// (quic-go does every 5,000-15,000 packets); a gateway that only knew the
// first ID would lose the connection then. This is QUIC-LB's plaintext
// server ID (draft-ietf-quic-load-balancers), without the shared key.
const (
	// ConnIDPrefixLen is the length of the routing prefix.
	ConnIDPrefixLen = 4
	// connIDLen: the prefix and 8 random bytes, so IDs of one socket
	// stay unique (quic-go refuses a colliding one) among millions.
	connIDLen = ConnIDPrefixLen + 8
)

// connIDs is the quic.ConnectionIDGenerator of one Endpoint.
type connIDs struct{ prefix [ConnIDPrefixLen]byte }

func newConnIDs() *connIDs {
	g := &connIDs{}
	rand.Read(g.prefix[:])
	return g
}

func (g *connIDs) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [connIDLen]byte
	copy(b[:], g.prefix[:])
	if _, err := rand.Read(b[ConnIDPrefixLen:]); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("transport: connection ID: %w", err)
	}
	return quic.ConnectionIDFromBytes(b[:]), nil
}

func (g *connIDs) ConnectionIDLen() int { return connIDLen }
