package quicinitial

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// Builders for TLS structures in tests.

func u8vec(b []byte) []byte  { return append([]byte{byte(len(b))}, b...) }
func u16vec(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }

func ext(typ uint16, data []byte) []byte {
	return append([]byte{byte(typ >> 8), byte(typ)}, u16vec(data)...)
}

func sniExt(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(list, 0)
		list = append(list, u16vec([]byte(n))...)
	}
	return ext(extServerName, u16vec(list))
}

func alpnExt(protos ...string) []byte {
	var list []byte
	for _, p := range protos {
		list = append(list, u8vec([]byte(p))...)
	}
	return ext(extALPN, u16vec(list))
}

// clientHelloWith is a ClientHello handshake message with the given
// extensions (none at all if exts is nil).
func clientHelloWith(exts ...[]byte) []byte {
	body := []byte{0x03, 0x03}
	body = append(body, bytes.Repeat([]byte{0x5a}, 32)...) // random
	body = append(body, u8vec(nil)...)                     // legacy_session_id
	body = append(body, u16vec([]byte{0x13, 0x01})...)     // TLS_AES_128_GCM_SHA256
	body = append(body, u8vec([]byte{0})...)               // null compression
	if exts != nil {
		body = append(body, u16vec(bytes.Join(exts, nil))...)
	}
	return append([]byte{handshakeTypeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// goClientHello is the ClientHello Go's crypto/tls client sends with cfg
// (over TCP, so without QUIC's transport parameters).
func goClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(client, cfg).Handshake() // fails when the pipe closes
	}()
	defer func() {
		server.Close()
		client.Close()
		<-done
	}()
	if err := server.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	var hdr [5]byte
	if _, err := io.ReadFull(server, hdr[:]); err != nil {
		t.Fatal(err)
	}
	if hdr[0] != 22 {
		t.Fatalf("first record has type %d, want handshake (22)", hdr[0])
	}
	msg := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(server, msg); err != nil {
		t.Fatal(err)
	}
	if n := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])); n != len(msg) {
		t.Fatalf("ClientHello of %d bytes spans records (have %d)", n, len(msg))
	}
	return msg
}

// cryptoTLSParse is what Go's crypto/tls server reads from a ClientHello
// message: its server name and ALPN protocols, or ok == false if it
// refuses the message. The message is handed to a real tls.Server over a
// connection that replays it, and the handshake is stopped in
// GetConfigForClient, the first thing that sees the parsed hello.
//
// Only msg is handed over: a message whose length field says otherwise
// counts as refused (crypto/tls would read a longer or shorter message).
func cryptoTLSParse(msg []byte) (serverName string, alpn []string, ok bool) {
	if len(msg) < 4 || int(msg[1])<<16|int(msg[2])<<8|int(msg[3]) != len(msg)-4 {
		return "", nil, false
	}
	var records []byte
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), 1<<14) // the largest plaintext record
		records = append(records, 22, 0x03, 0x01, byte(n>>8), byte(n))
		records = append(records, rest[:n]...)
		rest = rest[n:]
	}
	errStop := errors.New("stop")
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		serverName, alpn, ok = chi.ServerName, chi.SupportedProtos, true
		return nil, errStop
	}}
	_ = tls.Server(&replayConn{r: bytes.NewReader(records)}, cfg).Handshake()
	return serverName, alpn, ok
}

// replayConn reads from r and swallows writes: a TLS peer that has said
// all it will say.
type replayConn struct {
	net.Conn // nil: only Read, Write, Close and deadlines are used
	r        *bytes.Reader
}

func (c *replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }

func TestParseClientHello(t *testing.T) {
	rfc := readHex(t, "rfc9001-client-initial-crypto-frame.hex")[4:]
	goHello := goClientHello(t, &tls.Config{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}})
	goIPHello := goClientHello(t, &tls.Config{ServerName: "10.0.0.1", NextProtos: []string{"h3"}})
	for _, tc := range []struct {
		name       string
		msg        []byte
		serverName string
		alpn       []string
		wantErr    bool
	}{
		{"RFC 9001 example", rfc, "example.com", []string{"alpn"}, false},
		{"crypto/tls", goHello, "svc.example", []string{"quicmesh/1", "h3"}, false},
		{"crypto/tls dialing an IP address: no SNI", goIPHello, "", []string{"h3"}, false},
		{"no extensions", clientHelloWith(), "", nil, false},
		{"empty extensions", clientHelloWith([]byte{}), "", nil, false},
		{"SNI only", clientHelloWith(sniExt("a.b")), "a.b", nil, false},
		{"ALPN only", clientHelloWith(alpnExt("x")), "", []string{"x"}, false},
		{"unknown extensions around", clientHelloWith(ext(0xfe0d, []byte{1, 2, 3}), sniExt("a"), ext(21, make([]byte, 300)), alpnExt("p", "q")), "a", []string{"p", "q"}, false},
		{"other name type skipped", clientHelloWith(ext(extServerName, u16vec([]byte{7, 0, 1, 'z', 0, 0, 1, 'h'}))), "h", nil, false},
		{"longest name", clientHelloWith(sniExt(strings.Repeat("a", 255))), strings.Repeat("a", 255), nil, false},

		{"empty", nil, "", nil, true},
		{"server hello", append([]byte{2}, clientHelloWith()[1:]...), "", nil, true},
		{"length too long", append(clientHelloWith(), 0), "", nil, true},
		{"two SNI extensions", clientHelloWith(sniExt("a"), sniExt("b")), "", nil, true},
		{"two host names", clientHelloWith(sniExt("a", "b")), "", nil, true},
		{"two ALPN extensions", clientHelloWith(alpnExt("a"), alpnExt("b")), "", nil, true},
		{"empty SNI list", clientHelloWith(ext(extServerName, u16vec(nil))), "", nil, true},
		{"empty SNI name", clientHelloWith(sniExt("")), "", nil, true},
		{"SNI trailing bytes", clientHelloWith(ext(extServerName, append(u16vec(append([]byte{0}, u16vec([]byte("a"))...)), 0))), "", nil, true},
		{"SNI trailing dot", clientHelloWith(sniExt("a.b.")), "", nil, true},
		{"SNI with a space", clientHelloWith(sniExt("a b")), "", nil, true},
		{"SNI with a control byte", clientHelloWith(sniExt("a\nb")), "", nil, true},
		{"SNI not ASCII", clientHelloWith(sniExt("é.example")), "", nil, true},
		{"SNI too long", clientHelloWith(sniExt(strings.Repeat("a", 256))), "", nil, true},
		{"empty ALPN list", clientHelloWith(ext(extALPN, u16vec(nil))), "", nil, true},
		{"empty ALPN name", clientHelloWith(alpnExt("a", "")), "", nil, true},
		{"ALPN name overruns", clientHelloWith(ext(extALPN, u16vec([]byte{5, 'a'}))), "", nil, true},
		{"odd cipher_suites", func() []byte {
			m := clientHelloWith()
			m[4+34+1+1] = 3 // cipher_suites length: 2 → 3, so the vector swallows the compression byte
			return m
		}(), "", nil, true},
		{"extension overruns", func() []byte {
			e := sniExt("a")
			e[3]++ // the extension's length, one past the extensions vector
			return clientHelloWith(e)
		}(), "", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseClientHello(tc.msg)
			if tc.wantErr {
				if !errors.Is(err, ErrMalformedHello) {
					t.Fatalf("ParseClientHello = %+v, %v; want ErrMalformedHello", h, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.ServerName != tc.serverName || !slices.Equal(h.ALPN, tc.alpn) {
				t.Errorf("ServerName %q ALPN %q, want %q %q", h.ServerName, h.ALPN, tc.serverName, tc.alpn)
			}
			checkAgreesWithCryptoTLS(t, tc.msg)
		})
	}
}

// TestParseClientHelloTruncated: a ClientHello cut short anywhere, with
// its length field saying so or not, is refused, and never read past its
// end.
func TestParseClientHelloTruncated(t *testing.T) {
	msgs := [][]byte{
		readHex(t, "rfc9001-client-initial-crypto-frame.hex")[4:],
		goClientHello(t, &tls.Config{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}}),
	}
	for _, msg := range msgs {
		for n := range len(msg) {
			cut := bytes.Clone(msg[:n])
			if _, err := ParseClientHello(cut); !errors.Is(err, ErrMalformedHello) {
				t.Fatalf("cut to %d of %d bytes: %v, want ErrMalformedHello", n, len(msg), err)
			}
			if n < 4 {
				continue
			}
			// The same bytes with the length field fixed up: the inner
			// vectors must catch it. Cutting exactly at the end of the
			// compression methods leaves a hello without extensions,
			// which is valid.
			body := n - 4
			cut[1], cut[2], cut[3] = byte(body>>16), byte(body>>8), byte(body)
			h, err := ParseClientHello(cut)
			if err == nil && (h.ServerName != "" || h.ALPN != nil) {
				t.Fatalf("cut to %d of %d bytes, length fixed: read %+v from a hello cut before its extensions", n, len(msg), h)
			}
			if err != nil && !errors.Is(err, ErrMalformedHello) {
				t.Fatalf("cut to %d bytes: %v", n, err)
			}
		}
	}
}

// TestParseClientHelloAgreesWithCryptoTLS: what Go's own TLS server reads
// from real ClientHellos is what this parser reads.
func TestParseClientHelloAgreesWithCryptoTLS(t *testing.T) {
	for _, cfg := range []*tls.Config{
		{ServerName: "svc.example", NextProtos: []string{"quicmesh/1", "h3"}},
		{ServerName: "Mixed.Case.Example"},
		{ServerName: longName(253), NextProtos: manyALPN(100)},
		{InsecureSkipVerify: true},
	} {
		msg := goClientHello(t, cfg)
		if !checkAgreesWithCryptoTLS(t, msg) {
			t.Fatalf("crypto/tls refuses its own ClientHello: the comparison is broken\n%x", msg)
		}
		h, err := ParseClientHello(msg)
		if err != nil || h.ServerName != cfg.ServerName || !slices.Equal(h.ALPN, cfg.NextProtos) {
			t.Errorf("ParseClientHello = %q %q, %v; want %q %q", h.ServerName, h.ALPN, err, cfg.ServerName, cfg.NextProtos)
		}
	}
}

// checkAgreesWithCryptoTLS fails t if crypto/tls accepts msg and this
// parser reads something else from it, or refuses it for any reason but
// its own stricter rule on server names. It reports whether crypto/tls
// accepted msg.
func checkAgreesWithCryptoTLS(t testing.TB, msg []byte) bool {
	t.Helper()
	goName, goALPN, goOK := cryptoTLSParse(msg)
	if !goOK {
		return false
	}
	h, err := ParseClientHello(msg)
	if err != nil {
		if goName == "" || checkHostName([]byte(goName)) == nil {
			t.Fatalf("crypto/tls reads %q %q from a ClientHello this parser refuses: %v\n%x", goName, goALPN, err, msg)
		}
		return true
	}
	if h.ServerName != goName || !slices.Equal(h.ALPN, goALPN) && len(h.ALPN)+len(goALPN) > 0 {
		t.Fatalf("read %q %q, crypto/tls %q %q\n%x", h.ServerName, h.ALPN, goName, goALPN, msg)
	}
	return true
}
