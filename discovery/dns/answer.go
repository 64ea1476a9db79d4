package dns

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"

	"github.com/quicmesh/quicmesh/identity"
)

// identityKey starts a TXT record that declares a SPIFFE ID (RFC 1464
// attribute syntax: the key is compared without regard to case).
const identityKey = "spiffe="

// maxIdentityTXT bounds one identity TXT record: the key plus a SPIFFE ID,
// which the SPIFFE specification limits to 2048 bytes.
const maxIdentityTXT = len(identityKey) + 2048

// maxCNAMEs bounds the alias chain followed within one answer.
const maxCNAMEs = 8

// errIdentityTXT is wrapped by every identity TXT rejection.
var errIdentityTXT = errors.New("invalid identity TXT record")

// identityFromTXT returns the SPIFFE ID that a name's TXT records declare.
// Each element of txts is one TXT record's character-strings, which are
// concatenated (as for SPF and DKIM) so that a long ID may be split.
// Records whose text does not start with "spiffe=" (any case) are other
// uses of TXT and are ignored. It returns "" and no error if no record
// declares an ID, and an error wrapping errIdentityTXT if a declaring
// record is not exactly "spiffe=" followed by a canonical SPIFFE ID, or if
// two records declare different IDs: an identity is never guessed.
func identityFromTXT(txts [][]string) (string, error) {
	var found string
	for _, parts := range txts {
		n := 0
		for _, p := range parts {
			n += len(p)
		}
		if n < len(identityKey) {
			continue
		}
		if n > maxIdentityTXT {
			// Only a declaring record can be an error; check its key
			// without building the whole (oversized) text.
			if strings.EqualFold(joinPrefix(parts, len(identityKey)), identityKey) {
				return "", fmt.Errorf("%w: %d bytes, more than %d", errIdentityTXT, n, maxIdentityTXT)
			}
			continue
		}
		text := strings.Join(parts, "")
		if !strings.EqualFold(text[:len(identityKey)], identityKey) {
			continue
		}
		value := text[len(identityKey):]
		id, err := identity.ParseID(value)
		if err != nil {
			return "", fmt.Errorf("%w %q: %w", errIdentityTXT, text, err)
		}
		if id.String() != value {
			return "", fmt.Errorf("%w %q: not a canonical SPIFFE ID", errIdentityTXT, text)
		}
		if found != "" && found != value {
			return "", fmt.Errorf("%w: two records declare different SPIFFE IDs, %q and %q", errIdentityTXT, found, value)
		}
		found = value
	}
	return found, nil
}

// joinPrefix returns the first n bytes of the concatenation of parts (or
// all of it if shorter).
func joinPrefix(parts []string, n int) string {
	var b strings.Builder
	for _, p := range parts {
		if b.Len()+len(p) >= n {
			b.WriteString(p[:n-b.Len()])
			break
		}
		b.WriteString(p)
	}
	return b.String()
}

// rrset is the outcome of one query: the records of the asked type (after
// following aliases) and the TTL for which the outcome may be cached.
type rrset struct {
	rrs []dns.RR
	// ttl is the smallest TTL of the records and aliases used, or for a
	// negative answer the negative-caching TTL of RFC 2308 (0 if the
	// server sent no SOA).
	ttl uint32
	// nxdomain: the server said the name does not exist.
	nxdomain bool
}

// extract interprets a response to a query for (name, qtype). Only the
// answer section is trusted for data: records of the class IN owned by
// name, or by the end of a CNAME chain starting at name (at most maxCNAMEs
// long), are returned. The authority section is read only for the
// negative-caching TTL. The caller has already checked the response code.
func extract(m *dns.Msg, name string, qtype uint16) rrset {
	owner := dns.CanonicalName(name)
	var out rrset
	ttl := uint32(0)
	haveTTL := false
	minTTL := func(t uint32) {
		if !haveTTL || t < ttl {
			ttl, haveTTL = t, true
		}
	}
	// Follow aliases first: a CNAME's target becomes the owner looked for.
	for range maxCNAMEs {
		next := ""
		for _, rr := range m.Answer {
			h := rr.Header()
			if c, ok := rr.(*dns.CNAME); ok && h.Class == dns.ClassINET && qtype != dns.TypeCNAME &&
				dns.CanonicalName(h.Name) == owner {
				next = dns.CanonicalName(c.Target)
				minTTL(h.Ttl)
				break
			}
		}
		if next == "" || next == owner {
			break
		}
		owner = next
	}
	for _, rr := range m.Answer {
		h := rr.Header()
		if h.Rrtype == qtype && h.Class == dns.ClassINET && dns.CanonicalName(h.Name) == owner {
			out.rrs = append(out.rrs, rr)
			minTTL(h.Ttl)
		}
	}
	if len(out.rrs) == 0 {
		out.rrs = nil
		ttl, haveTTL = negativeTTL(m), true
	}
	out.nxdomain = m.Rcode == dns.RcodeNameError
	out.ttl = ttl
	return out
}

// negativeTTL is how long a negative answer may be cached (RFC 2308 §5):
// the smaller of the SOA record's TTL and its MINIMUM field; 0 if the
// authority section holds no SOA.
func negativeTTL(m *dns.Msg) uint32 {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok && soa.Hdr.Class == dns.ClassINET {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return 0
}

// txtStrings returns the character-strings of each TXT record in rrs.
func txtStrings(rrs []dns.RR) [][]string {
	var out [][]string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, t.Txt)
		}
	}
	return out
}
