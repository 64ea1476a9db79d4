// Package origdst recovers where a TCP connection was going before an
// iptables REDIRECT (quicmesh init) sent it to the sidecar: the address
// the app dialled, which the accepted socket's own local address no
// longer shows.
package origdst

import "errors"

// ErrNotRedirected is returned (wrapped) for a connection that reached
// the listener without a NAT redirect: no conntrack entry rewrote it, or
// its original destination is the listener itself. A transparent listener
// must refuse such a connection rather than dial its own address.
var ErrNotRedirected = errors.New("connection was not redirected (no original destination)")
