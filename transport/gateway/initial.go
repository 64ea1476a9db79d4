package gateway

import (
	"errors"
	"fmt"

	"github.com/quicmesh/quicmesh/transport/quicinitial"
)

// initialReader reads a flow's ClientHello with quicinitial.Assembler.
type initialReader struct{ a quicinitial.Assembler }

// NewInitialReader is the HelloReader of a real gateway: it decrypts the
// client's Initial packets (QUIC v1 and v2) and reads the SNI from the
// ClientHello in them.
func NewInitialReader() HelloReader { return &initialReader{} }

func (r *initialReader) Feed(b []byte) (string, bool, error) {
	h, complete, err := r.a.Feed(b)
	switch {
	case err == nil:
		return h.ServerName, complete, nil
	// These concern the datagram only; the Assembler's state is as
	// before (quicinitial.Assembler.Feed).
	case errors.Is(err, quicinitial.ErrNotInitial), errors.Is(err, quicinitial.ErrUnsupportedVersion),
		errors.Is(err, quicinitial.ErrDecrypt), errors.Is(err, quicinitial.ErrOtherConnection):
		return "", false, fmt.Errorf("%w: %w", ErrSkipDatagram, err)
	}
	return "", false, err
}
