package h1server

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// response is the http.ResponseWriter of one request. It follows
// net/http's server in what reaches the wire (see writeHead): the head
// is held until the first flush or the handler's end, so a body that
// ends before either gets a Content-Length, and a longer or flushed one
// is chunked unless the handler set Content-Length.
type response struct {
	c      *conn
	req    *http.Request
	header http.Header

	wroteHeader bool // WriteHeader (final status) called
	committed   bool // the head is in bw
	status      int
	pending     []byte // body written before the head was committed
	chunked     bool
	noBody      bool  // HEAD, 1xx, 204, 304
	clen        int64 // the handler's Content-Length, -1 if none
	written     int64
	closeAfter  bool
	trailers    bool // a Trailer field or TrailerPrefix keys
	failed      bool // a write to the app failed
}

// ErrBodyNotAllowed and ErrContentLength are net/http's.
var (
	errBodyNotAllowed = http.ErrBodyNotAllowed
	errContentLength  = http.ErrContentLength
)

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.writeInformational(code)
		return
	}
	w.wroteHeader = true
	w.status = code
	w.clen = -1
	if cl := w.header["Content-Length"]; len(cl) > 0 {
		if v, err := strconv.ParseInt(cl[0], 10, 64); err == nil && v >= 0 {
			w.clen = v
		} else {
			delete(w.header, "Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || !bodyAllowed(code)
}

func bodyAllowed(code int) bool {
	switch {
	case code >= 100 && code <= 199:
		return false
	case code == http.StatusNoContent, code == http.StatusNotModified:
		return false
	}
	return true
}

// writeInformational sends a 1xx response at once (103 Early Hints is
// the one bridge.Forward passes on).
func (w *response) writeInformational(code int) {
	if w.committed || w.failed {
		return
	}
	bw := w.c.bw
	writeStatusLine(bw, code)
	writeFields(bw, w.header, true)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		w.failed = true
	}
}

func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	var b [20]byte
	writeInt(bw, b[:0], int64(code), 10)
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		writeInt(bw, b[:0], int64(code), 10)
	}
	bw.WriteString("\r\n")
}

var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// writeFields writes h as net/http's Header.Write does (invalid names
// dropped, CR and LF in values replaced by spaces, values trimmed),
// skipping TrailerPrefix keys and, when framing is set, the fields
// writeHead decides itself.
func writeFields(bw *bufio.Writer, h http.Header, all bool) {
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		if !all {
			switch k {
			case "Content-Length", "Transfer-Encoding", "Connection":
				continue
			}
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				v = newlineToSpace.Replace(v)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(trimBlanks(v))
			bw.WriteString("\r\n")
		}
	}
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.noBody {
		if w.req.Method == http.MethodHead && bodyAllowed(w.status) {
			return len(p), nil // net/http eats a HEAD response's body
		}
		return 0, errBodyNotAllowed
	}
	if w.failed {
		return 0, errWriteFailed
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, errContentLength
	}
	w.written += int64(len(p))
	if !w.committed {
		if len(w.pending)+len(p) <= cap(w.pending) {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		first := w.pending
		if len(first) == 0 {
			first = p
		}
		w.commit(false, first)
	}
	w.writeBody(p)
	if w.failed {
		return 0, errWriteFailed
	}
	return len(p), nil
}

func (w *response) writeBody(p []byte) {
	bw := w.c.bw
	if w.chunked {
		var b [20]byte
		writeInt(bw, b[:0], int64(len(p)), 16)
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err := bw.WriteString("\r\n")
		w.failed = err != nil
		return
	}
	_, err := bw.Write(p)
	w.failed = err != nil
}

// Flush sends what was written so far.
func (w *response) Flush() { _ = w.FlushError() }

// FlushError is Flush for http.ResponseController.
func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(false, nil)
	}
	if w.failed {
		return errWriteFailed
	}
	if err := w.c.bw.Flush(); err != nil {
		w.failed = true
		return errWriteFailed
	}
	return nil
}

// EnableFullDuplex is a no-op: the body can always be read while the
// response is written (http.ResponseController).
func (w *response) EnableFullDuplex() error { return nil }

// commit writes the head and the body held so far into bw. final is
// the handler's end: a body not yet committed then gets its length.
// first is the body's first bytes, for Content-Type sniffing.
func (w *response) commit(final bool, first []byte) {
	w.committed = true
	h := w.header
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			w.trailers = true
			break
		}
	}
	if len(h["Trailer"]) > 0 {
		w.trailers = true
	}
	if w.c.srv.shuttingDown() || w.req.Close || hasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	_, hasTE := h["Transfer-Encoding"]
	if hasTE && w.clen >= 0 {
		w.clen = -1 // net/http ignores Content-Length with Transfer-Encoding
		delete(h, "Content-Length")
	}
	if final && w.clen < 0 && !w.trailers && !hasTE && bodyAllowed(w.status) &&
		(w.req.Method != http.MethodHead || len(w.pending) > 0) {
		w.clen = int64(len(w.pending))
	}
	bw := w.c.bw
	writeStatusLine(bw, w.status)
	if bodyAllowed(w.status) {
		if _, ok := h["Content-Type"]; !ok && !hasTE && len(first) > 0 && h.Get("Content-Encoding") == "" {
			h["Content-Type"] = []string{http.DetectContentType(first)}
		}
	} else if w.status == http.StatusNotModified {
		delete(h, "Content-Type")
	}
	writeFields(bw, h, false)
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(w.c.srv.date())
		bw.WriteString("\r\n")
	}
	te := ""
	if hasTE {
		te = h.Get("Transfer-Encoding")
	}
	switch {
	case w.noBody:
		if w.clen >= 0 && bodyAllowed(w.status) {
			writeLength(bw, w.clen)
		}
	case w.clen >= 0:
		writeLength(bw, w.clen)
	case te == "identity":
		w.closeAfter = true
	default:
		w.chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	} else if vv := h["Connection"]; len(vv) > 0 {
		for _, v := range vv {
			bw.WriteString("Connection: ")
			bw.WriteString(trimBlanks(newlineToSpace.Replace(v)))
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("\r\n")
	if len(w.pending) > 0 {
		if !w.noBody {
			w.writeBody(w.pending)
		}
		w.pending = w.pending[:0]
	}
}

func writeLength(bw *bufio.Writer, n int64) {
	var b [20]byte
	bw.WriteString("Content-Length: ")
	writeInt(bw, b[:0], n, 10)
	bw.WriteString("\r\n")
}

// finish ends the response after the handler returned, and reports
// whether the connection can carry another request.
func (w *response) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(true, w.pending)
	}
	bw := w.c.bw
	if w.chunked && !w.failed {
		bw.WriteString("0\r\n")
		w.writeTrailers()
		if _, err := bw.WriteString("\r\n"); err != nil {
			w.failed = true
		}
	}
	if !w.noBody && w.clen >= 0 && w.written != w.clen {
		w.closeAfter = true // too short: the app would wait for the rest
	}
	if !w.failed && bw.Flush() != nil {
		w.failed = true
	}
	return !w.failed && !w.closeAfter
}

// writeTrailers writes the declared trailers and the TrailerPrefix ones.
func (w *response) writeTrailers() {
	h, bw := w.header, w.c.bw
	var t http.Header
	if !w.trailers {
		for k := range h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				w.trailers = true
				break
			}
		}
		if !w.trailers {
			return
		}
	}
	t = make(http.Header)
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(trimBlanks(k))
			if vv, ok := h[k]; ok {
				t[k] = vv
			}
		}
	}
	for k, vv := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			t[k[len(http.TrailerPrefix):]] = vv
		}
	}
	writeFields(bw, t, true)
}

// dateCache is the Date field value, made once a second.
type dateCache struct {
	v atomic.Pointer[dateValue]
}

type dateValue struct {
	sec int64
	b   []byte
}

func (d *dateCache) get() []byte {
	now := time.Now()
	if v := d.v.Load(); v != nil && v.sec == now.Unix() {
		return v.b
	}
	v := &dateValue{sec: now.Unix(), b: now.UTC().AppendFormat(nil, http.TimeFormat)}
	d.v.Store(v)
	return v.b
}

// writeInt writes n in base without an allocation: bufio.Writer.Write
// would make buf escape, WriteByte does not.
func writeInt(bw *bufio.Writer, buf []byte, n int64, base int) {
	for _, c := range strconv.AppendInt(buf, n, base) {
		bw.WriteByte(c)
	}
}
