package httpx

import (
	"bytes"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// headersFromBytes turns fuzz input into a header map. Each line is
// "name:value"; a line starting with '!' is stored under its raw key,
// bypassing canonicalisation, the others go through Header.Add.
func headersFromBytes(data []byte) http.Header {
	h := http.Header{}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		raw := false
		if len(line) > 0 && line[0] == '!' {
			raw, line = true, line[1:]
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		if raw {
			h[string(name)] = append(h[string(name)], string(value))
		} else {
			h.Add(string(name), string(value))
		}
	}
	return h
}

// addSeeds adds each seed to f's corpus.
func addSeeds(f *testing.F, seeds []string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}

func cloneHeader(h http.Header) http.Header {
	c := make(http.Header, len(h))
	for k, vv := range h {
		c[k] = append([]string(nil), vv...)
	}
	return c
}

// namedByConnection lists, lower-cased, the tokens of every Connection field.
func namedByConnection(h http.Header) map[string]bool {
	out := map[string]bool{}
	for k, vv := range h {
		if !strings.EqualFold(k, "Connection") {
			continue
		}
		for _, v := range vv {
			for tok := range strings.SplitSeq(v, ",") {
				if tok = strings.Trim(tok, " \t"); tok != "" {
					out[strings.ToLower(tok)] = true
				}
			}
		}
	}
	return out
}

func isTETrailers(k string, vv []string) bool {
	return strings.EqualFold(k, "Te") && len(vv) == 1 && vv[0] == "trailers"
}

func FuzzHeaders(f *testing.F) {
	seeds := []string{
		"Connection:X-A, x-b\nX-A:1\nX-B:2\nX-C:3",
		"!connection:Quicmesh-Peer-Identity\nQuicmesh-Peer-Identity:spiffe://x",
		"Te:trailers\nConnection:TE\nUpgrade:h2c",
		"!te:gzip, trailers\n!TE:deflate",
		"!quicmesh-proxy:1\n!QUICMESH-X:2\nX-Quicmesh:3",
		"Keep-Alive:1\nProxy-Connection:1\nTransfer-Encoding:chunked\nProxy-Authorization:x",
		"Connection:" + strings.Repeat("a,", 20) + "A\n!a:1",
		"!Bad Name:x\n!:empty\nX:\x00\r\n",
	}
	addSeeds(f, seeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := headersFromBytes(data)
		named := namedByConnection(orig)

		// Each function alone.
		h := cloneHeader(orig)
		StripMeshHeaders(h)
		for k := range h {
			if IsMeshHeader(k) {
				t.Fatalf("StripMeshHeaders left %q", k)
			}
		}
		for tok := range namedByConnection(h) {
			if IsMeshHeader(tok) {
				t.Fatalf("StripMeshHeaders left Connection naming %q", tok)
			}
		}

		h = cloneHeader(orig)
		RemoveHopByHop(h)
		checkNoHopByHop(t, h, named)
		again := cloneHeader(h)
		RemoveHopByHop(again)
		if !reflect.DeepEqual(again, h) {
			t.Fatalf("RemoveHopByHop not idempotent: %v then %v", h, again)
		}

		// Both, in either order, as the bridges use them.
		for _, order := range []bool{true, false} {
			h = cloneHeader(orig)
			if order {
				RemoveHopByHop(h)
				StripMeshHeaders(h)
			} else {
				StripMeshHeaders(h)
				RemoveHopByHop(h)
			}
			checkNoHopByHop(t, h, named)
			for k, vv := range h {
				if IsMeshHeader(k) {
					t.Fatalf("mesh field %q left", k)
				}
				// Everything left that is not TE is an untouched original.
				if !isTETrailers(k, vv) && !reflect.DeepEqual(orig[k], vv) {
					t.Fatalf("field %q changed: %q -> %q", k, orig[k], vv)
				}
			}
			// And nothing end-to-end was lost.
			for k, vv := range orig {
				if IsMeshHeader(k) || IsHopByHop(k) || named[strings.ToLower(k)] {
					continue
				}
				if !reflect.DeepEqual(h[k], vv) {
					t.Fatalf("end-to-end field %q lost: %q -> %q", k, vv, h[k])
				}
			}
		}
	})
}

func checkNoHopByHop(t *testing.T, h http.Header, named map[string]bool) {
	t.Helper()
	for k, vv := range h {
		if isTETrailers(k, vv) {
			continue
		}
		if IsHopByHop(k) {
			t.Fatalf("hop-by-hop field %q left", k)
		}
		if named[strings.ToLower(k)] {
			t.Fatalf("field %q named by Connection left", k)
		}
	}
}

// FuzzInspector checks the raw-framing inspector against net/http's own
// parser on arbitrary byte streams: it must never panic, must not depend on
// how the stream is split into reads, and whenever it lets a request
// through, that request must start at the same byte where net/http says it
// starts. A disagreement there is exactly a request-smuggling desync.
func FuzzInspector(f *testing.F) {
	const maxFuzzStream = 4096
	for _, tc := range rawCases {
		if len(tc.raw) <= maxFuzzStream {
			f.Add([]byte(tc.raw), uint16(7))
		}
	}
	f.Add([]byte(validPipeline), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		if len(data) > maxFuzzStream {
			data = data[:maxFuzzStream] // keeps executions (and minimisation) fast
		}
		whole := &inspector{}
		whole.scan(data)
		if len(whole.queue) > maxQueued {
			t.Fatalf("queue grew to %d", len(whole.queue))
		}
		at := int(split) % (len(data) + 1)
		parts := &inspector{}
		parts.scan(data[:at])
		parts.scan(data[at:])
		if !reflect.DeepEqual(parts.queue, whole.queue) || parts.poisonErr != whole.poisonErr || parts.st != whole.st {
			t.Fatalf("split at %d changes the outcome", at)
		}

		for _, r := range goRequests(data) {
			off, err := whole.checkAt(r.method, r.uri)
			if err != nil {
				return // Guard refuses and closes the connection
			}
			if off != r.offset {
				t.Fatalf("inspector accepted %v at offset %d", r, off)
			}
		}
	})
}

// wireFields is h as an HTTP/2 or HTTP/3 client sends it: names in lower
// case, the values of names that differ only in case together (sorted:
// their order across keys follows map iteration), and User-Agent as
// those clients treat it, at most one and none if empty.
func wireFields(h http.Header) map[string][]string {
	out := map[string][]string{}
	for k, vv := range h {
		lk := asciiLower(k)
		out[lk] = append(out[lk], vv...)
	}
	for k := range out {
		slices.Sort(out[k])
	}
	if ua := slices.DeleteFunc(out["user-agent"], func(v string) bool { return v == "" }); len(ua) > 0 {
		out["user-agent"] = ua
	} else {
		delete(out, "user-agent")
	}
	return out
}

// asciiLower lower-cases the ASCII letters of s only: field names are
// ASCII tokens (clients refuse others before lower-casing them).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// FuzzOutgoingFields checks OutgoingFields against what it stands for:
// RemoveHopByHop, StripMeshHeaders, KeepUserAgentAbsent and the removal
// of Expect on a copy, as bridge.PrepareOutgoing does. The wire form
// must be the same, every name lower case, src untouched, and no value
// slice copied.
func FuzzOutgoingFields(f *testing.F) {
	seeds := []string{
		"User-Agent:Go-http-client/1.1\nAccept-Encoding:gzip",
		"Connection:X-A, x-b, User-Agent\nX-A:1\nX-B:2\nX-C:3\nUser-Agent:x",
		"!connection:Quicmesh-Peer-Identity\nQuicmesh-Peer-Identity:spiffe://x\nQuicmesh-Service:forged",
		"Te:trailers\nConnection:TE\nUpgrade:h2c\nExpect:100-continue\nContent-Type:application/grpc",
		"!te:gzip, trailers\n!TE:deflate\n!user-agent:lower\n!X-Dup:a\n!x-dup:b",
		"Keep-Alive:1\nProxy-Connection:1\nTransfer-Encoding:chunked\nProxy-Authorization:x\n!expect:x",
		"Connection:" + strings.Repeat("a,", 20) + "A\n!a:1\nUser-Agent:",
	}
	addSeeds(f, seeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		src := headersFromBytes(data)
		orig := cloneHeader(src)

		want := cloneHeader(src)
		RemoveHopByHop(want)
		StripMeshHeaders(want)
		KeepUserAgentAbsent(want)
		for k := range want {
			if strings.EqualFold(k, "Expect") {
				delete(want, k)
			}
		}

		got := http.Header{}
		OutgoingFields(got, src)
		if !reflect.DeepEqual(src, orig) {
			t.Fatalf("src changed: %q -> %q", orig, src)
		}
		if w, g := wireFields(want), wireFields(got); !reflect.DeepEqual(w, g) {
			t.Fatalf("on the wire %q, want %q (from %q)", g, w, src)
		}
		for k, vv := range got {
			if asciiLower(k) != k {
				t.Fatalf("name %q not in lower case", k)
			}
			if sv := src[http.CanonicalHeaderKey(k)]; len(vv) > 0 && &vv[0] != &teTrailers[0] && &vv[0] != &noUserAgent[0] && len(sv) == len(vv) && &sv[0] != &vv[0] && reflect.DeepEqual(sv, vv) {
				t.Fatalf("%q copied", k)
			}
		}
	})
}
