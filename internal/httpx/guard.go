package httpx

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// What net/http already rejects, and what this package adds.
//
// Measured against net/http (Go 1.26) on a loopback http.Server with
// MaxHeaderBytes 64 KiB; TestNetHTTPBaseline keeps these facts checked.
//
// Rejected by net/http before any handler runs (so Guard never sees them):
//
//   - differing duplicate Content-Length fields, or an invalid one
//     ("5, 5", "-5", "+5")                                          → 400
//   - NUL, CR, other CTLs or DEL in a field value; invalid bytes or an
//     empty name in a field name; whitespace between name and colon
//     → 400
//   - whitespace at the start of the first field line                → 400
//   - a field section larger than MaxHeaderBytes (+4 KiB slack)      → 431
//   - Transfer-Encoding other than a single "chunked" in HTTP/1.1
//     ("xchunked", "chunked, identity", two TE lines)                → 501
//     (RFC 9112 §6.1 says a server SHOULD answer 501 for a transfer
//     coding it does not understand; there is no hook to make it 400)
//   - a missing Host in HTTP/1.1, several Host fields, or a Host with
//     invalid bytes                                                  → 400
//
// Accepted by net/http and passed to the handler in normalised form, with
// no trace left in the *http.Request:
//
//   - Content-Length together with Transfer-Encoding: chunked. The body is
//     read as chunked and both fields are deleted from r.Header.
//   - Transfer-Encoding in an HTTP/1.0 request: silently ignored (and
//     deleted); Content-Length, if any, frames the body. A front end that
//     honours TE there would disagree about where the request ends.
//   - obs-fold (a field line starting with SP/HTAB): folded into the
//     previous value, even for Content-Length.
//   - bare LF line endings in the request head.
//   - identical duplicate Content-Length fields: collapsed to one.
//
// Detected by net/http only while the handler reads the body:
//
//   - malformed chunk sizes, or chunk data not followed by CRLF: r.Body
//     returns an error, after the handler has started.
//
// ValidateRequest re-checks everything visible in a parsed request (field
// names and values, Content-Length, Transfer-Encoding, Host, overall size),
// which matters for requests that did not come through net/http's HTTP/1
// parser (HTTP/2, HTTP/3, hand-built requests). It cannot see the
// normalised cases above. For those, serve HTTP/1 connections wrapped by
// InspectConn (or InspectListener) with http.Server.ConnContext set to
// ConnContext: Guard then also rejects, with 400 and before next runs,
// CL+TE, TE in HTTP/1.0, obs-fold, bare-LF heads, and chunk-framing errors
// that arrive together with the head. internal/h1server (the client
// sidecar's HTTP/1.1 server) parses each head once instead: it serves only
// heads that pass these checks and hands every other one, with the rest of
// its connection, to an http.Server behind InspectConn.

// DefaultMaxHeaderListSize bounds the size of a request's fields as
// ValidateRequest measures it: the sum over all fields of len(name) +
// len(value) + 32, as in RFC 9113 §6.5.2. Beyond it ValidateRequest
// answers 431. It matches http.DefaultMaxHeaderBytes.
const DefaultMaxHeaderListSize = http.DefaultMaxHeaderBytes

// RequestError is a request refused by validation. Status is the HTTP
// status to answer with (400 or 431); Reason is a short, fixed phrase that
// never echoes request bytes, safe to put in a header.
type RequestError struct {
	Status int
	Reason string
}

func (e *RequestError) Error() string {
	return "invalid request (" + strconv.Itoa(e.Status) + "): " + e.Reason
}

// BadRequest returns a *RequestError with status 400 and reason.
func BadRequest(reason string) error {
	return &RequestError{Status: http.StatusBadRequest, Reason: reason}
}

func badRequest(reason string) *RequestError {
	return &RequestError{Status: http.StatusBadRequest, Reason: reason}
}

// Validation failures, as returned by ValidateRequest.
var (
	errMissingHost      = badRequest("missing Host")
	errInvalidHost      = badRequest("invalid Host")
	errFieldName        = badRequest("invalid header field name")
	errFieldValue       = badRequest("invalid header field value")
	errTrailerName      = badRequest("invalid trailer field name")
	errCLAndTE          = badRequest("both Content-Length and Transfer-Encoding")
	errMultipleCL       = badRequest("multiple differing Content-Length values")
	errInvalidCL        = badRequest("invalid Content-Length")
	errUnsupportedTE    = badRequest("Transfer-Encoding other than chunked")
	errHeadersTooLarge  = &RequestError{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "header fields too large"}
	errBadProtoVersion  = badRequest("unsupported HTTP version")
	errNegativeLength   = badRequest("invalid content length")
	errTEInHTTP10Header = badRequest("Transfer-Encoding in an HTTP/1.0 request")
)

// ValidateRequest checks a server-side request for the malformations a
// proxy must not forward. It returns nil or a *RequestError:
//
//   - a field name that is not an RFC 9110 token, or a field value with
//     NUL, CR, LF or another control character (HTAB excepted) → 400;
//     trailer names declared in r.Trailer are checked too;
//   - Content-Length together with Transfer-Encoding, several differing
//     Content-Length values, or one that is not a decimal number → 400;
//   - Transfer-Encoding other than exactly "chunked" (case-insensitive),
//     or any Transfer-Encoding in an HTTP/1.0 request → 400;
//   - no Host in an HTTP/1.1 (or later) request, or a Host with bytes that
//     cannot appear in uri-host [":" port] → 400;
//   - fields larger than DefaultMaxHeaderListSize → 431;
//   - a protocol version other than HTTP/1.x, 2 or 3 → 400.
//
// See the comment at the top of guard.go for which of these net/http has
// already enforced on HTTP/1 requests, and for what it cannot see.
func ValidateRequest(r *http.Request) error {
	if err := validateRequest(r); err != nil {
		return err
	}
	return nil
}

func validateRequest(r *http.Request) *RequestError {
	switch r.ProtoMajor {
	case 1, 2, 3:
	default:
		return errBadProtoVersion
	}
	size := 0
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return errFieldName
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errFieldValue
			}
			size += len(k) + len(v) + 32
		}
	}
	if size > DefaultMaxHeaderListSize {
		return errHeadersTooLarge
	}
	for k := range r.Trailer {
		if !httpguts.ValidHeaderFieldName(k) {
			return errTrailerName
		}
	}

	// Framing. net/http moves Transfer-Encoding into r.TransferEncoding and
	// deletes it from r.Header; requests built by hand or by other servers
	// may carry it in either place.
	te := r.TransferEncoding
	teHeader := headerValues(r.Header, "Transfer-Encoding")
	hasTE := len(te) > 0 || len(teHeader) > 0
	cl := headerValues(r.Header, "Content-Length")
	if hasTE {
		if len(cl) > 0 {
			return errCLAndTE
		}
		if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
			return errTEInHTTP10Header
		}
		if !onlyChunked(te) || (len(teHeader) > 0 && !onlyChunked(teHeader)) {
			return errUnsupportedTE
		}
	}
	if len(cl) > 0 {
		first := strings.Trim(cl[0], " \t")
		if !isDecimal(first) {
			return errInvalidCL
		}
		for _, v := range cl[1:] {
			if strings.Trim(v, " \t") != first {
				return errMultipleCL
			}
		}
	}
	if r.ContentLength < -1 {
		return errNegativeLength
	}

	if r.Host == "" {
		if r.ProtoAtLeast(1, 1) {
			return errMissingHost
		}
	} else if !httpguts.ValidHostHeader(r.Host) {
		return errInvalidHost
	}
	return nil
}

// headerValues returns the values of the field name in any key case.
func headerValues(h http.Header, name string) []string {
	if vv, ok := h[name]; ok {
		return vv
	}
	var out []string
	for k, vv := range h {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			out = append(out, vv...)
		}
	}
	return out
}

func onlyChunked(vv []string) bool {
	if len(vv) == 0 {
		return true
	}
	return len(vv) == 1 && strings.EqualFold(strings.Trim(vv[0], " \t"), "chunked")
}

func isDecimal(s string) bool {
	if s == "" || len(s) > 18 { // fits in int64, like net/http's limit
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// WriteValidationError answers a refused request: the status of err if it
// is a *RequestError (400 otherwise), a Quicmesh-Proxy-Error field with the
// reason, and the reason as a plain-text body. It does not echo request
// bytes.
func WriteValidationError(w http.ResponseWriter, err error) {
	status, reason := http.StatusBadRequest, "invalid request"
	var re *RequestError
	if errors.As(err, &re) {
		if re.Status >= 400 && re.Status <= 599 {
			status = re.Status
		}
		if re.Reason != "" {
			reason = re.Reason
		}
	}
	h := w.Header()
	h.Set(HeaderProxyError, "request rejected: "+sanitizeValue(reason))
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(http.StatusText(status) + ": " + reason + "\n"))
}

// sanitizeValue keeps a reason usable as a field value whatever its origin.
func sanitizeValue(s string) string {
	if httpguts.ValidHeaderFieldValue(s) && len(s) <= 256 {
		return s
	}
	b := []byte(s)
	if len(b) > 256 {
		b = b[:256]
	}
	for i, c := range b {
		if c < ' ' || c == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

// Guard wraps next with request validation. For each request it:
//
//  1. on HTTP/1 connections set up with InspectConn and ConnContext,
//     consults the raw-framing inspector and refuses requests whose head
//     was malformed in ways net/http hides (CL+TE, TE in HTTP/1.0,
//     obs-fold, bare LF, broken chunk framing seen so far);
//  2. calls ValidateRequest.
//
// A refused request is answered by WriteValidationError (400 or 431 with a
// Quicmesh-Proxy-Error field) and, on HTTP/1, "Connection: close", since
// the framing of whatever follows on that connection cannot be trusted;
// next is not called. Without InspectConn, Guard still works but only step
// 2 applies.
//
// With InspectConn, Guard must be the server's outermost handler so that it
// sees every request net/http reads: verdicts are matched to requests in
// order, and a request that bypassed Guard makes the following ones on that
// connection fail closed (400) rather than be matched to the wrong head.
func Guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkRequest(r); err != nil {
			if r.ProtoMajor == 1 {
				w.Header().Set("Connection", "close")
			}
			WriteValidationError(w, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func checkRequest(r *http.Request) *RequestError {
	if r.ProtoMajor == 1 {
		if in := inspectorFrom(r.Context()); in != nil {
			if err := in.check(r.Method, r.RequestURI); err != nil {
				return err
			}
		}
	}
	return validateRequest(r)
}
