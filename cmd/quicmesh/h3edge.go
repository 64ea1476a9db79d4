package main

import (
	"errors"

	"github.com/quicmesh/quicmesh/transport/fallback"
)

// inboundH3 turns on plain HTTP/3 clients at the inbound QUIC port
// (--inbound-h3, or config "inbound.h3"; off by default). The flag, when
// given, wins over the file, as for every other setting.
func (m merger) inboundH3(o *proxyOptions) error {
	on := m.fc.Inbound.H3
	if m.set["inbound-h3"] {
		on = m.f.inboundH3
	}
	if on && o.sidecar.Transport == fallback.TCP {
		return errors.New(m.name("inbound-h3", "inbound.h3", m.fc.Inbound.H3) + ": HTTP/3 needs QUIC, and transport mode tcp serves none")
	}
	o.sidecar.InboundH3 = on
	return nil
}
