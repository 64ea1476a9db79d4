package dns

import (
	"errors"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/quicmesh/quicmesh/identity"
)

// FuzzIdentityTXT checks the identity TXT syntax: no panic; an accepted ID
// is canonical and declared verbatim by some record; a rejection wraps
// errIdentityTXT; a record set without a "spiffe=" record declares nothing.
// The input is split into records at '\n' and into character-strings at
// '\t'.
func FuzzIdentityTXT(f *testing.F) {
	for _, s := range []string{
		"spiffe=spiffe://test.local/ns/default/sa/echo",
		"SPIFFE=spiffe://test.local/ns/\tdefault/sa/echo",
		"v=spf1 -all\nspiffe=spiffe://td",
		"spiffe=spiffe://td/a\nspiffe=spiffe://td/b",
		"spiffe=spiffe://td/a\nspiffe=spiffe://td/a",
		"spiffe=",
		"spiffe=spiffe://Td/a",
		"spiffe=spiffe://td/a/",
		"spiffe= spiffe://td/a",
		"spiffe=spiffe://td/./a",
		"spiff\te=spiffe://td",
		"spiffe=spiffe://td/" + strings.Repeat("x", 2100),
		"",
		"\n\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var txts [][]string
		for rec := range strings.SplitSeq(in, "\n") {
			txts = append(txts, strings.Split(rec, "\t"))
		}
		id, err := identityFromTXT(txts)
		if err != nil {
			if !errors.Is(err, errIdentityTXT) {
				t.Fatalf("error %v does not wrap errIdentityTXT", err)
			}
			if id != "" {
				t.Fatalf("ID %q returned with an error", id)
			}
			return
		}
		declaring := false
		for _, parts := range txts {
			text := strings.Join(parts, "")
			if len(text) >= len(identityKey) && strings.EqualFold(text[:len(identityKey)], identityKey) {
				declaring = true
			}
		}
		if id == "" {
			if declaring {
				t.Fatalf("a declaring record was accepted without an ID: %q", in)
			}
			return
		}
		parsed, err := identity.ParseID(id)
		if err != nil || parsed.String() != id {
			t.Fatalf("accepted non-canonical ID %q (%v)", id, err)
		}
		found := false
		for _, parts := range txts {
			text := strings.Join(parts, "")
			if strings.EqualFold(text[:min(len(text), len(identityKey))], identityKey) && text[len(identityKey):] == id {
				found = true
			} else if len(text) >= len(identityKey) && strings.EqualFold(text[:len(identityKey)], identityKey) {
				t.Fatalf("record %q disagrees with the accepted ID %q", text, id)
			}
		}
		if !found {
			t.Fatalf("ID %q is declared by no record of %q", id, in)
		}
	})
}

// FuzzExtract feeds arbitrary DNS messages to the answer interpretation:
// no panic, and whatever it returns is of the asked type and class and
// owned by the asked name or the end of an alias chain within the answer.
func FuzzExtract(f *testing.F) {
	seed := func(name string, qtype uint16, rrs ...string) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Response = true
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		soa, _ := dns.NewRR(testSOA)
		m.Ns = append(m.Ns, soa)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(srvEcho, dns.TypeSRV, srvEcho+" 30 IN SRV 0 1 4143 a.mesh.test.")
	seed("a.mesh.test.", dns.TypeA, "a.mesh.test. 30 IN CNAME b.mesh.test.", "b.mesh.test. 10 IN A 127.0.0.1")
	seed("a.mesh.test.", dns.TypeTXT, `a.mesh.test. 30 IN TXT "spiffe=spiffe://td/x"`, `A.Mesh.Test. 30 IN TXT "x" "y"`)
	seed("a.mesh.test.", dns.TypeA, "a.mesh.test. 30 IN CNAME a.mesh.test.")
	seed("a.mesh.test.", dns.TypeAAAA)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil || len(m.Question) != 1 {
			return
		}
		q := m.Question[0]
		set := extract(m, q.Name, q.Qtype)
		owners := map[string]bool{dns.CanonicalName(q.Name): true}
		for range maxCNAMEs {
			for _, rr := range m.Answer {
				if c, ok := rr.(*dns.CNAME); ok && owners[dns.CanonicalName(c.Hdr.Name)] {
					owners[dns.CanonicalName(c.Target)] = true
				}
			}
		}
		for _, rr := range set.rrs {
			h := rr.Header()
			if h.Rrtype != q.Qtype || h.Class != dns.ClassINET || !owners[dns.CanonicalName(h.Name)] {
				t.Fatalf("returned %v for question %v", rr, q)
			}
			if set.ttl > h.Ttl {
				t.Fatalf("TTL %d above a returned record's %d", set.ttl, h.Ttl)
			}
		}
		if set.nxdomain != (m.Rcode == dns.RcodeNameError) {
			t.Fatal("nxdomain does not follow the response code")
		}
		identityFromTXT(txtStrings(set.rrs)) // must not panic
	})
}
