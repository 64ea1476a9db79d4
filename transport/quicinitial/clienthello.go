package quicinitial

import (
	"fmt"
)

// TLS code points (RFC 8446, RFC 6066, RFC 7301).
const (
	handshakeTypeClientHello = 1
	extServerName            = 0
	extALPN                  = 16
	sniHostName              = 0
	// maxHostNameLen bounds a server name: a DNS name has at most 253
	// characters in text form; 255 leaves room for no more.
	maxHostNameLen = 255
)

// ParseClientHello reads the server name and ALPN protocols from one TLS
// handshake message, which must be a complete ClientHello (msg_type 1,
// its 3-byte length, and exactly that many bytes of body). Only
// ServerName and ALPN of the result are set.
//
// The structure is checked as far as it is walked — every vector against
// what remains, no trailing bytes, at most one server_name and one ALPN
// extension, one host name, no empty protocol name — and is never
// stricter than Go's crypto/tls (TestParseClientHelloAgreesWithCryptoTLS),
// with one exception: a server name must be at most 255 bytes of
// printable ASCII without a trailing dot. Everything else is the
// destination's TLS stack to judge.
//
// The server name is returned as the client sent it; DNS names compare
// case-insensitively, so route on strings.ToLower of it. An empty
// ServerName means the client sent none (Go's client sends none when the
// name it dials is an IP address). With Encrypted Client Hello it is the
// outer, public name.
func ParseClientHello(msg []byte) (Hello, error) {
	var h Hello
	if len(msg) < 4 {
		return h, fmt.Errorf("%w: %d bytes, too short for a handshake header", ErrMalformedHello, len(msg))
	}
	if msg[0] != handshakeTypeClientHello {
		return h, fmt.Errorf("%w: handshake message type %d", ErrMalformedHello, msg[0])
	}
	if n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]); n != len(msg)-4 {
		return h, fmt.Errorf("%w: message length %d, have %d bytes", ErrMalformedHello, n, len(msg)-4)
	}
	b := msg[4:]
	// legacy_version (2) and random (32).
	if len(b) < 34 {
		return h, fmt.Errorf("%w: truncated before the session ID", ErrMalformedHello)
	}
	b = b[34:]
	// legacy_session_id, cipher_suites, legacy_compression_methods: only
	// their framing matters here. (Their contents are the destination's
	// to judge; being no stricter than Go's crypto/tls keeps the gateway
	// from refusing what the destination would accept.)
	_, b, ok := vec8(b)
	if !ok {
		return h, fmt.Errorf("%w: bad legacy_session_id", ErrMalformedHello)
	}
	suites, b, ok := vec16(b)
	if !ok || len(suites)%2 != 0 {
		return h, fmt.Errorf("%w: bad cipher_suites", ErrMalformedHello)
	}
	if _, b, ok = vec8(b); !ok {
		return h, fmt.Errorf("%w: bad legacy_compression_methods", ErrMalformedHello)
	}
	if len(b) == 0 {
		return h, nil // no extensions, so no server name or ALPN
	}
	exts, b, ok := vec16(b)
	if !ok {
		return h, fmt.Errorf("%w: bad extensions", ErrMalformedHello)
	}
	if len(b) != 0 {
		return h, fmt.Errorf("%w: %d bytes after the extensions", ErrMalformedHello, len(b))
	}
	var seenSNI, seenALPN bool
	for len(exts) > 0 {
		if len(exts) < 4 {
			return h, fmt.Errorf("%w: truncated extension header", ErrMalformedHello)
		}
		typ := int(exts[0])<<8 | int(exts[1])
		var data []byte
		if data, exts, ok = vec16(exts[2:]); !ok {
			return h, fmt.Errorf("%w: extension %d overruns the extensions", ErrMalformedHello, typ)
		}
		switch typ {
		case extServerName:
			if seenSNI {
				return h, fmt.Errorf("%w: two server_name extensions", ErrMalformedHello)
			}
			seenSNI = true
			name, err := parseServerName(data)
			if err != nil {
				return h, err
			}
			h.ServerName = name
		case extALPN:
			if seenALPN {
				return h, fmt.Errorf("%w: two ALPN extensions", ErrMalformedHello)
			}
			seenALPN = true
			protos, err := parseALPN(data)
			if err != nil {
				return h, err
			}
			h.ALPN = protos
		}
	}
	return h, nil
}

// parseServerName reads a server_name extension's ServerNameList (RFC
// 6066 section 3) and returns its host_name.
func parseServerName(data []byte) (string, error) {
	list, rest, ok := vec16(data)
	if !ok || len(rest) != 0 || len(list) == 0 {
		return "", fmt.Errorf("%w: bad server_name list", ErrMalformedHello)
	}
	var host []byte
	for len(list) > 0 {
		nameType := list[0]
		var name []byte
		if name, list, ok = vec16(list[1:]); !ok || len(name) == 0 {
			return "", fmt.Errorf("%w: bad server_name entry", ErrMalformedHello)
		}
		if nameType != sniHostName {
			continue // other name types are undefined; skip them as crypto/tls does
		}
		if host != nil {
			return "", fmt.Errorf("%w: two host names in server_name", ErrMalformedHello)
		}
		host = name
	}
	if host == nil {
		return "", nil
	}
	if err := checkHostName(host); err != nil {
		return "", err
	}
	return string(host), nil
}

// checkHostName refuses server names that cannot be DNS names and would
// only burden a routing table or a log line: longer than 255 bytes, bytes
// other than printable ASCII, a trailing dot (which crypto/tls refuses
// too).
func checkHostName(host []byte) error {
	if len(host) == 0 {
		return fmt.Errorf("%w: empty server name", ErrMalformedHello)
	}
	if len(host) > maxHostNameLen {
		return fmt.Errorf("%w: server name of %d bytes", ErrMalformedHello, len(host))
	}
	for _, c := range host {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: server name byte 0x%02x", ErrMalformedHello, c)
		}
	}
	if host[len(host)-1] == '.' {
		return fmt.Errorf("%w: server name with a trailing dot", ErrMalformedHello)
	}
	return nil
}

// parseALPN reads an ALPN extension's ProtocolNameList (RFC 7301 section
// 3.1): at least one protocol, none empty.
func parseALPN(data []byte) ([]string, error) {
	list, rest, ok := vec16(data)
	if !ok || len(rest) != 0 || len(list) == 0 {
		return nil, fmt.Errorf("%w: bad ALPN protocol list", ErrMalformedHello)
	}
	// Count first so that the result is allocated once.
	n := 0
	for l := list; len(l) > 0; n++ {
		var p []byte
		if p, l, ok = vec8(l); !ok || len(p) == 0 {
			return nil, fmt.Errorf("%w: bad ALPN protocol name", ErrMalformedHello)
		}
	}
	protos := make([]string, 0, n)
	for len(list) > 0 {
		var p []byte
		p, list, _ = vec8(list)
		protos = append(protos, string(p))
	}
	return protos, nil
}

// vec8 splits a vector with a 1-byte length off the front of b.
func vec8(b []byte) (v, rest []byte, ok bool) {
	if len(b) < 1 || int(b[0]) > len(b)-1 {
		return nil, b, false
	}
	n := int(b[0])
	return b[1 : 1+n], b[1+n:], true
}

// vec16 splits a vector with a 2-byte length off the front of b.
func vec16(b []byte) (v, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, b, false
	}
	n := int(b[0])<<8 | int(b[1])
	if n > len(b)-2 {
		return nil, b, false
	}
	return b[2 : 2+n], b[2+n:], true
}
