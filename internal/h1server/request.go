package h1server

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// errFallback is a head this server does not serve itself: the
// connection goes to the fallback from the start of that head. It is
// used for everything rare (upgrades, CONNECT, Expect, HTTP/1.0,
// declared trailers, OPTIONS *) and for everything malformed: net/http
// and the framing inspector behind the fallback answer those exactly as
// they did before this server existed (status, Quicmesh-Proxy-Error,
// close), so the lean server accepts a strict subset of what they accept.
type fallbackError struct{ reason string }

func (e *fallbackError) Error() string { return "h1server: falling back: " + e.reason }

func fallback(reason string) error { return &fallbackError{reason} }

// Reasons, fixed so a fallback costs no allocation.
var (
	errNotCRLF        = fallback("line not terminated by CRLF")
	errRequestLine    = fallback("request line not served here")
	errFieldLine      = fallback("field line not served here")
	errFraming        = fallback("framing not served here")
	errHost           = fallback("Host not served here")
	errRareFeature    = fallback("upgrade, CONNECT, Expect or Trailer")
	errHeadTooLarge   = fallback("head larger than the buffer")
	errLeadingEmpty   = fallback("empty line before the request line")
	errTooManyFields  = fallback("too many fields")
	errHeaderTooLarge = fallback("head larger than MaxHeaderBytes")
)

// maxFields bounds the fields of a head served here (a head of 4 KiB
// cannot hold many more).
const maxFields = 128

// findHeadEnd returns the length of the head at the start of b (through
// its empty line), 0 if b does not hold all of it yet, or an error for a
// bare LF. from is where the previous search stopped.
func findHeadEnd(b []byte, from int) (int, error) {
	i := from
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0, nil
		}
		i += j
		if i == 0 || b[i-1] != '\r' {
			return 0, errNotCRLF
		}
		if i >= 3 && b[i-2] == '\n' {
			return i + 1, nil
		}
		if i == 1 {
			return 0, errLeadingEmpty
		}
		i++
	}
}

// parsed is a head this server serves, as the handler sees it.
type parsed struct {
	req     http.Request // a value: serveRequest's WithContext makes the one copy
	chunked bool
	length  int64 // Content-Length, when not chunked
}

// parseHead parses a complete head (request line, fields, empty line,
// all CRLF-terminated). Anything it does not accept is a *fallbackError.
func parseHead(head []byte) (parsed, error) {
	var p parsed
	// One string for every name and value of the head.
	s := string(head[:len(head)-2])
	eol := strings.IndexByte(s, '\r')
	if s[eol+1] != '\n' {
		return p, errRequestLine // a bare CR
	}
	line := s[:eol]
	rest := s[eol+2:]

	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return p, errRequestLine
	}
	method := line[:sp1]
	target := line[sp1+1:]
	sp2 := strings.IndexByte(target, ' ')
	if sp2 <= 0 {
		return p, errRequestLine
	}
	if target[sp2+1:] != "HTTP/1.1" {
		return p, errRequestLine // HTTP/1.0 and anything else: net/http
	}
	target = target[:sp2]
	for i := 0; i < len(method); i++ {
		if !httpguts.IsTokenRune(rune(method[i])) {
			return p, errRequestLine
		}
	}
	if method == http.MethodConnect || target[0] == '*' {
		return p, errRareFeature
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c <= ' ' || c >= 0x7f {
			return p, errRequestLine
		}
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return p, errRequestLine
	}

	// Count the field lines first: one backing array for all values.
	n := strings.Count(rest, "\r\n")
	if n > maxFields {
		return p, errTooManyFields
	}
	h := make(http.Header, n)
	vals := make([]string, n)
	var hosts, cls int
	var host, cl string
	var te bool
	for k := 0; rest != ""; k++ {
		eol := strings.IndexByte(rest, '\r')
		if eol < 0 || rest[eol+1] != '\n' {
			return p, errFieldLine // a bare CR
		}
		fl := rest[:eol]
		rest = rest[eol+2:]
		colon := strings.IndexByte(fl, ':')
		if colon <= 0 {
			return p, errFieldLine // also obs-fold and leading blanks
		}
		name, value := fl[:colon], trimBlanks(fl[colon+1:])
		canon := true
		upper := true
		for i := 0; i < len(name); i++ {
			c := name[i]
			if !httpguts.IsTokenRune(rune(c)) {
				return p, errFieldLine
			}
			if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
				canon = false
			}
			upper = c == '-'
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return p, errFieldLine
			}
		}
		if !canon {
			name = canonicalKey(name)
		}
		switch name {
		case "Host":
			hosts++
			host = value
			continue
		case "Content-Length":
			cls++
			cl = value
		case "Transfer-Encoding":
			if te || !strings.EqualFold(value, "chunked") {
				return p, errFraming
			}
			te = true
			continue // net/http moves it to r.TransferEncoding
		case "Upgrade", "Expect", "Trailer":
			return p, errRareFeature
		}
		vals[k] = value
		if vv, ok := h[name]; ok {
			h[name] = append(vv, value)
		} else {
			h[name] = vals[k : k+1 : k+1]
		}
	}
	if hosts != 1 || !httpguts.ValidHostHeader(host) {
		return p, errHost
	}
	switch {
	case te && cls > 0, cls > 1:
		return p, errFraming
	case te:
		p.chunked = true
	case cls == 1:
		length, ok := parseLength(cl)
		if !ok {
			return p, errFraming
		}
		p.length = length
	}
	if pr, ok := h["Pragma"]; ok && len(pr) == 1 && pr[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	p.req = http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       u.Host,
		RequestURI: target,
		Close:      hasToken(h["Connection"], "close"),
	}
	if p.req.Host == "" {
		p.req.Host = host
	}
	if p.chunked {
		p.req.TransferEncoding = []string{"chunked"}
		p.req.ContentLength = -1
	} else {
		p.req.ContentLength = p.length
	}
	return p, nil
}

// canonicalKey is http.CanonicalHeaderKey for a valid token, with the
// common names interned.
func canonicalKey(name string) string {
	var buf [64]byte
	if len(name) > len(buf) {
		return http.CanonicalHeaderKey(name)
	}
	b := buf[:len(name)]
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
		upper = c == '-'
	}
	if k, ok := commonKeys[string(b)]; ok {
		return k
	}
	return string(b)
}

var commonKeys = func() map[string]string {
	m := make(map[string]string)
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Authorization", "Cache-Control", "Connection", "Content-Length", "Content-Type",
		"Content-Encoding", "Cookie", "Host", "If-Modified-Since", "If-None-Match",
		"Origin", "Pragma", "Referer", "Transfer-Encoding", "Upgrade", "User-Agent",
		"Expect", "Trailer", "Te", "Traceparent", "Tracestate", "X-Forwarded-For",
		"X-Forwarded-Proto", "X-Request-Id",
	} {
		m[k] = k
	}
	return m
}()

func trimBlanks(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseLength parses a Content-Length value: decimal digits only, at
// most 18 of them (the inspector's and net/http's limits).
func parseLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isToken(c byte) bool { return httpguts.IsTokenRune(rune(c)) }

// hasToken reports whether a comma-separated list in vv has token
// (case-insensitive).
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for v != "" {
			var el string
			el, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(trimBlanks(el), token) {
				return true
			}
		}
	}
	return false
}
