package gateway

import (
	"errors"
	"fmt"

	"github.com/quicmesh/quicmesh/transport/quicinitial"
)

// initialReader reads a flow's ClientHello with quicinitial.Assembler.
type initialReader struct {
	a quicinitial.Assembler
	h quicinitial.Hello // once complete: what a refusal answers
}

// NewInitialReader is the HelloReader of a real gateway: it decrypts the
// client's Initial packets (QUIC v1 and v2) and reads the SNI from the
// ClientHello in them.
func NewInitialReader() HelloReader { return &initialReader{} }

func (r *initialReader) Feed(b []byte) (string, bool, error) {
	h, complete, err := r.a.Feed(b)
	switch {
	case err == nil:
		if complete {
			r.h = h
		}
		return h.ServerName, complete, nil
	// These concern the datagram only; the Assembler's state is as
	// before (quicinitial.Assembler.Feed).
	case errors.Is(err, quicinitial.ErrNotInitial), errors.Is(err, quicinitial.ErrUnsupportedVersion),
		errors.Is(err, quicinitial.ErrDecrypt), errors.Is(err, quicinitial.ErrOtherConnection):
		return "", false, fmt.Errorf("%w: %w", ErrSkipDatagram, err)
	}
	return "", false, err
}

// Refusal is a CONNECTION_CLOSE with CONNECTION_REFUSED in a server
// Initial: the gateway can protect it because Initial keys derive from
// the client's DCID alone (quicinitial.CloseInitial). A sidecar reads a
// remote CONNECTION_REFUSED as "this endpoint will not serve you now"
// (transport.ReasonRefused) and tries another endpoint at once.
func (r *initialReader) Refusal(reason string) ([]byte, error) {
	if r.h.DCID == nil {
		return nil, errors.New("gateway: no complete ClientHello to refuse")
	}
	return quicinitial.CloseInitial(r.h, quicinitial.ConnectionRefused, reason)
}
