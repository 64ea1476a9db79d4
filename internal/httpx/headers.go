// Package httpx is the HTTP header hygiene shared by quicmesh's HTTP/1,
// HTTP/2 and HTTP/3 bridges:
//
//   - RemoveHopByHop drops the connection-specific fields of RFC 9110
//     §7.6.1 before a message crosses a hop.
//   - StripMeshHeaders drops the mesh's own "Quicmesh-" fields, so nothing
//     an application or a peer sends can impersonate what a sidecar adds
//     (Quicmesh-Peer-Identity above all).
//   - ValidateRequest and Guard refuse malformed or smuggling-prone requests
//     from applications before they are routed; InspectConn/ConnContext
//     extend Guard to what net/http normalises away (see guard.go for the
//     split of responsibilities).
//   - CopyHeader and WriteTrailers move fields between messages.
//
// Every function here matches header names case-insensitively, so maps
// built by hand with non-canonical keys are handled too.
package httpx

import (
	"context"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Mesh-internal header fields. Sidecars own every field whose name starts
// with MeshHeaderPrefix: they strip whatever arrives from outside and set
// their own.
const (
	// MeshHeaderPrefix is the canonical-form prefix of every mesh field.
	MeshHeaderPrefix = "Quicmesh-"
	// HeaderPeerIdentity carries the SPIFFE ID of the calling workload, as
	// verified by the inbound sidecar from the peer's mTLS certificate.
	HeaderPeerIdentity = "Quicmesh-Peer-Identity"
	// HeaderProxyError names the proxy that failed a request and why; it
	// is set on responses a sidecar generates itself.
	HeaderProxyError = "Quicmesh-Proxy-Error"
	// HeaderProxy identifies the sidecar that handled a message.
	HeaderProxy = "Quicmesh-Proxy"
	// HeaderService names the service the outbound sidecar resolved, for
	// the inbound one.
	HeaderService = "Quicmesh-Service"
	// HeaderOrigProto says how the app spoke to its sidecar, so the far
	// side can speak the same to its app when not configured: "h2", or
	// absent for HTTP/1 (an "h1" from older sidecars means the same).
	HeaderOrigProto = "Quicmesh-Orig-Proto"
	// HeaderDestPort carries the port the app originally dialled on the
	// transparent path (a service's virtual IP or a pod IP), so that the
	// inbound sidecar delivers to the app on that port, if its
	// configuration allows the port. A sidecar that does not know it
	// strips it with the other mesh fields and routes by HeaderService.
	HeaderDestPort = "Quicmesh-Dest-Port"
)

// The mesh fields a sidecar adds to a request it sends to a peer, keyed
// as HTTP/3 carries them: in lower case (RFC 9114 §4.2). quic-go's client
// lower-cases every name of a request's header that is not already
// (strings.ToLower: an allocation per field and request) and its server
// canonicalises the names it receives, so the far side reads these
// under HeaderService, HeaderOrigProto and HeaderDestPort; the names on
// the wire are the same.
const (
	WireService   = "quicmesh-service"
	WireOrigProto = "quicmesh-orig-proto"
	WireDestPort  = "quicmesh-dest-port"
)

// IsMeshHeader reports whether name (in any case) is a mesh-internal field,
// i.e. starts with MeshHeaderPrefix.
func IsMeshHeader(name string) bool {
	return len(name) >= len(MeshHeaderPrefix) && strings.EqualFold(name[:len(MeshHeaderPrefix)], MeshHeaderPrefix)
}

// hopByHop lists the fields that are connection-specific whether or not
// Connection names them (RFC 9110 §7.6.1, plus the non-standard
// Keep-Alive and Proxy-Connection, and the proxy authentication fields,
// which belong to one hop).
var hopByHop = [...]string{
	"Connection",
	"Keep-Alive",
	"Proxy-Connection",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Transfer-Encoding",
	"Upgrade",
}

// IsHopByHop reports whether name (in any case) is one of the fixed
// hop-by-hop fields: Connection, Keep-Alive, Proxy-Connection,
// Proxy-Authenticate, Proxy-Authorization, TE, Transfer-Encoding, Upgrade.
// Fields that are hop-by-hop only because Connection names them are not
// known here; RemoveHopByHop handles those.
func IsHopByHop(name string) bool {
	for _, h := range hopByHop {
		if len(name) == len(h) && strings.EqualFold(name, h) {
			return true
		}
	}
	return false
}

// RemoveHopByHop deletes from h, in place, the hop-by-hop fields of RFC
// 9110 §7.6.1: Connection and every field it names, Keep-Alive,
// Proxy-Connection, Proxy-Authenticate, Proxy-Authorization,
// Transfer-Encoding and Upgrade.
//
// TE is the exception: if any TE value contains the "trailers" token, h
// keeps exactly "TE: trailers" (even when Connection names TE, as HTTP/1.1
// clients must); any other TE is removed. "trailers" is the only TE value
// HTTP/2 and HTTP/3 allow (RFC 9113 §8.2.2), gRPC requires it end to end,
// and this is also what net/http/httputil.ReverseProxy does. A TE of only
// "trailers" therefore passes through unchanged; "trailers, deflate" is
// reduced to "trailers".
func RemoveHopByHop(h http.Header) {
	if len(h) == 0 {
		return
	}
	named, trailers := connectionAndTE(h)
	keptTE := false
	for k, vv := range h {
		if trailers && k == "Te" && len(vv) == 1 && vv[0] == "trailers" {
			keptTE = true // already in its final form; saves an allocation
			continue
		}
		if IsHopByHop(k) || named.contains(k) {
			delete(h, k)
		}
	}
	if trailers && !keptTE {
		h["Te"] = []string{"trailers"}
	}
}

// OutgoingFields adds to dst the fields of src a request carries to its
// next hop over HTTP/2 or HTTP/3, keyed in lower case as those protocols
// send them: what is left of src after RemoveHopByHop, StripMeshHeaders,
// KeepUserAgentAbsent and the removal of Expect (what
// bridge.PrepareOutgoing does to its copy of a request's header), in
// one pass over src and without copying it. dst shares src's value
// slices: neither may modify them in place afterwards (Set, Del and
// assignments are fine; appending to a value slice is not).
//
// quic-go's and net/http's HTTP/2 and HTTP/3 clients lower-case the
// names they send; a name already in lower case costs them nothing,
// others an allocation (quic-go: strings.ToLower per field and
// request). Common names take their lower-case form from a table here;
// other names are lower-cased here instead.
func OutgoingFields(dst, src http.Header) {
	named, trailers := connectionAndTE(src)
	for k, vv := range src {
		if IsHopByHop(k) || IsMeshHeader(k) || len(k) == len("Expect") && strings.EqualFold(k, "Expect") || named.contains(k) {
			continue
		}
		lk := lowerName(k)
		if prev, ok := dst[lk]; ok {
			// src had the name in more than one case.
			dst[lk] = append(prev[:len(prev):len(prev)], vv...)
		} else {
			dst[lk] = vv
		}
	}
	if trailers {
		dst["te"] = teTrailers
	}
	if _, ok := dst["user-agent"]; !ok {
		dst["user-agent"] = noUserAgent
	}
}

// NextHop is the request for the next hop made from r as
// bridge.PrepareOutgoing makes it, but for the header, which is r's
// until the caller sets out.Header: a shallow copy of r with ctx, its
// URL's scheme and host set (Host, the field, stays r.Host), no
// RequestURI, Close false, no trailers, and a nil body when r has none
// (a nil body tells the HTTP/2 and HTTP/3 clients there is none). ok is
// false and out nil when r's body brings trailers: those must be copied
// at the body's end, which bridge.PrepareOutgoing arranges.
func NextHop(ctx context.Context, r *http.Request, scheme, host string) (out *http.Request, ok bool) {
	hasBody := r.Body != nil && r.Body != http.NoBody && (r.ContentLength != 0 || len(r.TransferEncoding) > 0)
	if hasBody && len(r.Trailer) > 0 {
		return nil, false
	}
	out = r.WithContext(ctx)
	u := *r.URL
	u.Scheme, u.Host = scheme, host
	out.URL = &u
	out.RequestURI = ""
	out.Close = false
	out.Trailer = nil
	if !hasBody {
		out.Body = nil
	}
	return out, true
}

// Shared, never modified values for OutgoingFields.
var (
	teTrailers  = []string{"trailers"}
	noUserAgent = []string{""} // see KeepUserAgentAbsent
)

// lowerNames maps common canonical field names to their lower case.
var lowerNames = func() map[string]string {
	names := [...]string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Access-Control-Request-Headers", "Access-Control-Request-Method",
		"Authorization", "Baggage", "Cache-Control", "Content-Disposition", "Content-Encoding",
		"Content-Language", "Content-Length", "Content-Location", "Content-Range", "Content-Type",
		"Cookie", "Date", "Dnt", "Etag", "Forwarded", "From", "Grpc-Accept-Encoding",
		"Grpc-Encoding", "Grpc-Timeout", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
		"If-Range", "If-Unmodified-Since", "Last-Modified", "Link", "Location", "Max-Forwards",
		"Origin", "Pragma", "Priority", "Range", "Referer", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
		"Sec-Fetch-Site", "Traceparent", "Tracestate", "Upgrade-Insecure-Requests", "User-Agent",
		"Via", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Spanid", "X-B3-Traceid",
		"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id",
		"X-Requested-With",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = strings.ToLower(n)
	}
	return m
}()

// lowerName is name in lower case, without allocating for a common
// canonical name or one that is lower case already.
func lowerName(name string) string {
	if l, ok := lowerNames[name]; ok {
		return l
	}
	i := 0
	for i < len(name) && (name[i] < 'A' || name[i] > 'Z') {
		i++
	}
	if i == len(name) {
		return name
	}
	// ASCII only: a name with other bytes is not a token, which the
	// clients refuse as it is.
	var b strings.Builder
	b.Grow(len(name))
	b.WriteString(name[:i])
	for ; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// connectionAndTE returns the field names the Connection fields of h
// list, and whether a TE field has the "trailers" token (names matched in
// any case).
func connectionAndTE(h http.Header) (named tokenSet, trailers bool) {
	var (
		conn  []string // Connection field values
		nconn int      // number of Connection fields
	)
	for k, vv := range h {
		switch {
		case len(k) == len("Connection") && strings.EqualFold(k, "Connection"):
			if nconn++; nconn == 1 {
				conn = vv
			} else {
				conn = append(conn[:len(conn):len(conn)], vv...)
			}
		case len(k) == len("Te") && strings.EqualFold(k, "Te"):
			trailers = trailers || httpguts.HeaderValuesContainsToken(vv, "trailers")
		}
	}
	return connectionTokens(conn), trailers
}

// StripMeshHeaders deletes from h, in place, every field whose name starts
// with MeshHeaderPrefix (in any case). It also removes such names from the
// Connection field's token list (dropping Connection if nothing remains):
// otherwise a client sending "Connection: Quicmesh-Peer-Identity" could
// make a later RemoveHopByHop delete the identity a sidecar adds after
// stripping.
func StripMeshHeaders(h http.Header) {
	for k := range h {
		if IsMeshHeader(k) {
			delete(h, k)
		}
	}
	for k, vv := range h {
		if len(k) != len("Connection") || !strings.EqualFold(k, "Connection") {
			continue
		}
		if !anyMeshToken(vv) {
			continue
		}
		kept := make([]string, 0, len(vv))
		for _, v := range vv {
			var b strings.Builder
			for tok := range strings.SplitSeq(v, ",") {
				tok = strings.Trim(tok, " \t")
				if tok == "" || IsMeshHeader(tok) {
					continue
				}
				if b.Len() > 0 {
					b.WriteString(", ")
				}
				b.WriteString(tok)
			}
			if b.Len() > 0 {
				kept = append(kept, b.String())
			}
		}
		if len(kept) == 0 {
			delete(h, k)
		} else {
			h[k] = kept
		}
	}
}

func anyMeshToken(vv []string) bool {
	for _, v := range vv {
		for tok := range strings.SplitSeq(v, ",") {
			if IsMeshHeader(strings.Trim(tok, " \t")) {
				return true
			}
		}
	}
	return false
}

// tokenSet is the set of field names listed in Connection. Small sets are
// scanned; large ones (a hostile "Connection: a, b, c, ..." list) are put
// in a map so RemoveHopByHop stays linear.
type tokenSet struct {
	list []string
	set  map[string]struct{} // lower-cased; used when list is long
}

const tokenSetScanMax = 8

func connectionTokens(values []string) tokenSet {
	var ts tokenSet
	for _, v := range values {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.Trim(tok, " \t")
			if tok == "" {
				continue
			}
			if ts.set != nil {
				ts.set[strings.ToLower(tok)] = struct{}{}
				continue
			}
			ts.list = append(ts.list, tok)
			if len(ts.list) > tokenSetScanMax {
				ts.set = make(map[string]struct{}, 2*len(ts.list))
				for _, t := range ts.list {
					ts.set[strings.ToLower(t)] = struct{}{}
				}
				ts.list = nil
			}
		}
	}
	return ts
}

func (ts tokenSet) contains(name string) bool {
	if ts.set != nil {
		_, ok := ts.set[strings.ToLower(name)]
		return ok
	}
	for _, t := range ts.list {
		if len(t) == len(name) && strings.EqualFold(t, name) {
			return true
		}
	}
	return false
}

// CopyHeader appends every value of src to dst, copying the value slices so
// the two headers do not share backing arrays.
func CopyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = append(dst[k][:len(dst[k]):len(dst[k])], vv...)
	}
}

// trailerForbidden lists fields that must not be sent as trailers because
// recipients need them before the content (RFC 9110 §6.5.1): framing,
// routing, and the Trailer field itself.
var trailerForbidden = [...]string{
	"Content-Length",
	"Content-Encoding",
	"Content-Type",
	"Content-Range",
	"Host",
	"Trailer",
}

// IsTrailerAllowed reports whether a field named name may be forwarded as
// a trailer: not hop-by-hop, not mesh-internal, not one of the fields RFC
// 9110 §6.5.1 forbids in trailers, and a valid field name.
func IsTrailerAllowed(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) || IsHopByHop(name) || IsMeshHeader(name) {
		return false
	}
	for _, f := range trailerForbidden {
		if len(name) == len(f) && strings.EqualFold(name, f) {
			return false
		}
	}
	return true
}

// AnnounceTrailers adds to h (response headers, before WriteHeader) a
// "Trailer" field listing the names in trailers that have values and that
// IsTrailerAllowed accepts. For HTTP/1.1 this is what makes net/http use chunked encoding
// (and thus able to send trailers) even for a short body.
func AnnounceTrailers(h http.Header, trailers http.Header) {
	for k, vv := range trailers {
		if len(vv) > 0 && IsTrailerAllowed(k) {
			h.Add("Trailer", http.CanonicalHeaderKey(k))
		}
	}
}

// WriteTrailers sends trailers through w once the body has been written,
// using net/http's http.TrailerPrefix mechanism, which HTTP/2 and HTTP/3
// servers honour without advance notice. Over HTTP/1.1 trailers need a
// chunked response: announce them first (AnnounceTrailers) or flush before
// the handler returns, otherwise net/http sends a Content-Length and the
// trailers are dropped. Fields rejected by IsTrailerAllowed are dropped.
// Call it after the last Write and before the handler returns.
func WriteTrailers(w http.ResponseWriter, trailers http.Header) {
	h := w.Header()
	for k, vv := range trailers {
		if len(vv) == 0 || !IsTrailerAllowed(k) {
			continue
		}
		h[http.TrailerPrefix+http.CanonicalHeaderKey(k)] = append([]string(nil), vv...)
	}
}

// UpgradeType returns the protocol an HTTP/1.1 request asks to switch to:
// the Upgrade field's value when Connection lists "upgrade", else "".
func UpgradeType(h http.Header) string {
	up := h.Get("Upgrade")
	if up == "" || !connectionTokens(h.Values("Connection")).contains("upgrade") {
		return ""
	}
	return up
}

// KeepUserAgentAbsent makes an outgoing request without a User-Agent go
// out without one: Go's HTTP/1, HTTP/2 and HTTP/3 clients otherwise add
// their own ("Go-http-client/1.1"), and a proxy must not invent fields the
// client did not send. A User-Agent already present is left alone.
func KeepUserAgentAbsent(h http.Header) {
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""}
	}
}
