//go:build !linux

package h1client

import "net"

// peeker cannot look at the socket without blocking here: a closed
// pooled connection shows as a failed request, retried on a fresh
// connection when it is safe (see Client.RoundTrip).
type peeker struct{}

func newPeeker(net.Conn) *peeker { return &peeker{} }

func (*peeker) peekAlive() bool { return true }
